#!/usr/bin/env bash
# EleutherAI Bergson 2.5.1 in its own virtual environment, .venv-bergson/, on the CPU build
# of torch 2.13.0, for benchmarks/vs_bergson.py (make bench-bergson runs this first).
#
# Bergson is installed with --no-deps: its metadata asks for torchvision, torchaudio and
# bitsandbytes, which its gradient path never imports (checked in the 2.5.1 wheel) and
# which would pull a CUDA build of torch. Its other runtime dependencies are installed
# explicitly. Every install is constrained by torch==2.13.0 (nothing may upgrade it) and by
# benchmarks/constraints.txt (the same transformers, peft, numpy as gradstore's benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-bergson
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip
TORCH_PIN=$(mktemp)
trap 'rm -f "$TORCH_PIN"' EXIT
echo "torch==2.13.0" >"$TORCH_PIN"
"$PIP" install --quiet -c "$TORCH_PIN" torch==2.13.0
"$PIP" install --quiet -c "$TORCH_PIN" -c benchmarks/constraints.txt \
    accelerate datasets jinja2 'jaxtyping>=0.3.3' ml_dtypes natsort numpy scipy \
    'peft>=0.17.0' petname pyarrow pyyaml simple-parsing torchopt 'transformers>=5.0' \
    'huggingface-hub>=1.13.0' gguf psutil
"$PIP" install --quiet --no-deps bergson==2.5.1
"$VENV/bin/python" -c "import torch, bergson, transformers, peft; print('bergson', \
    __import__('importlib.metadata').metadata.version('bergson'), 'torch', torch.__version__, \
    'transformers', transformers.__version__, 'peft', peft.__version__)"
