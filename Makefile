PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU build of torch from this machine's disk; a looser pin pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: install test lint bench-selection clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check gradstore tests benchmarks
	$(PY) -m pytest -q -m "not benchmark"

lint: install
	$(VENV)/bin/ruff check gradstore tests benchmarks

bench-selection: install
	$(PY) benchmarks/selection_speed.py --out benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
