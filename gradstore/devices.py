"""Which torch device a command runs on (``cpu``, ``cuda``, ``cuda:N`` or ``auto``)."""

from __future__ import annotations

import torch

from gradstore.errors import GradstoreError


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; asking for CUDA where there is
    none is a user error (exit 2), not a crash later."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise GradstoreError(f"device {device!r} asked for, but CUDA is not available; use cpu")
    try:
        out = torch.device(device)
    except RuntimeError as exc:
        raise GradstoreError(f"device {device!r} is not valid; use cpu, cuda or auto") from exc
    if out.type == "cuda" and out.index is not None and out.index >= torch.cuda.device_count():
        raise GradstoreError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s); use cuda or cuda:0")
    return out
