"""Which base-model parameters full-layer gradients are taken of (``--params PATTERN``).

A pattern is a shell-style glob (``fnmatch.fnmatchcase``: case-sensitive, ``*`` matches any
text, dots included, ``?`` one character, ``[...]`` a set) matched against the whole of a
parameter's name as ``model.named_parameters()`` gives it, e.g.
``model.layers.*.mlp.down_proj.weight`` or ``*.self_attn.[qv]_proj.*``. A parameter is
taken when any pattern matches it; the flat gradient keeps ``named_parameters`` order,
whatever the patterns' order. Tied weights appear once, under their first name (a tied
``lm_head.weight`` is ``model.embed_tokens.weight``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from gradstore.errors import GradstoreError


def select_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Make exactly the parameters matching ``patterns`` trainable; returns their names.

    Refuses a peft model (``--params`` is for a plain model's own weights), a pattern that
    matches nothing, and a selected parameter that is not floating point (quantized).
    """
    if hasattr(model, "peft_config"):
        raise GradstoreError(
            "--params takes gradients of a plain model's own weights, not of a peft (LoRA) "
            "model; load the base model without adapters, or drop --params"
        )
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            examples = ", ".join(names[i] for i in sorted({0, len(names) // 2, len(names) - 1}))
            raise GradstoreError(
                f"--params {pattern!r} matches no parameter of the model; patterns are globs "
                f"over full names from named_parameters(), such as {examples}"
            )
    chosen = [n for n in names if any(fnmatchcase(n, p) for p in patterns)]
    for name, p in named:
        if name in chosen and not p.is_floating_point():
            raise GradstoreError(
                f"--params selects {name}, a {p.dtype} (quantized) tensor, which has no "
                "gradient; load the model in a floating-point dtype or select other parameters"
            )
    for name, p in named:
        p.requires_grad_(name in chosen)
    return chosen


def parameter_set_fingerprint(names: Sequence[str], shapes: Sequence[Sequence[int]]) -> str:
    """``"params: <N> tensors sha256:<16 hex>"`` over the parameters' names and shapes, in
    the flat gradient's order: recorded in the projection spec's layout, so that tables
    taken over different parameter sets are refused as a pool/target pair."""
    text = ";".join(f"{n}:{'x'.join(map(str, s))}" for n, s in zip(names, shapes, strict=True))
    return f"params: {len(names)} tensors sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
