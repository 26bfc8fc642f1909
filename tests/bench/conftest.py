import sys
from pathlib import Path

# The benchmark's modules live in benchmarks/e2e (run as scripts, not a package).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "e2e"))

from tests.grads.conftest import (  # noqa: E402, F401
    chat_tokenizer,
    gpt2_dir,
    llama_dir,
    plain_tokenizer,
)
