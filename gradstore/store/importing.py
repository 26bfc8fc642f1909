"""Reading and validating vectors before anything is written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gradstore.errors import GradstoreError


def _as_matrix(obj: object, source: str) -> np.ndarray:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(x, torch.Tensor) for x in obj):
        return torch.cat([x.detach().cpu().float().reshape(x.shape[0], -1) for x in obj]).numpy()
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray))}
        if len(tensors) == 1:
            return _as_matrix(next(iter(tensors.values())), source)
        raise GradstoreError(
            f"{source} holds a dict with {len(tensors)} tensors ({sorted(tensors)[:5]}); "
            "save the one (N x d) tensor to import on its own"
        )
    raise GradstoreError(f"{source} holds a {type(obj).__name__}, not an (N x d) tensor or array")


def read_vector_file(path: str | Path) -> np.ndarray:
    """An (N, d) float array from .npy or .pt (e.g. LESS's all_orig.pt)."""
    p = Path(path)
    if not p.exists():
        raise GradstoreError(f"vector file {str(p)!r} does not exist; check the --vectors path")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix in (".pt", ".pth", ".bin"):
            arr = _as_matrix(torch.load(p, map_location="cpu", weights_only=True), str(p))
        else:
            raise GradstoreError(f"vector file {str(p)!r} has suffix {suffix!r}; use .npy or .pt")
    except GradstoreError:
        raise
    except Exception as exc:  # corrupt or foreign file
        raise GradstoreError(f"cannot read vectors from {str(p)!r}: {exc}") from None
    return arr


def read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise GradstoreError(f"{what} file {str(p)!r} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def validate_vectors(vectors: object, what: str = "vectors") -> np.ndarray:
    """Check shape, dtype and finiteness; return a float32 (N, d) array."""
    arr = _as_matrix(vectors, what) if not isinstance(vectors, np.ndarray) else vectors
    if arr.ndim != 2:
        raise GradstoreError(
            f"{what} must be a 2-D (rows x dims) matrix, got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise GradstoreError(f"{what} are empty (shape {tuple(arr.shape)}); nothing to import")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise GradstoreError(f"{what} have dtype {arr.dtype}; expected float16 or float32")
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise GradstoreError(
            f"{what} have NaN or inf in {len(bad)} row(s) (first: {bad[:5].tolist()}); "
            "recompute those gradients or drop the rows"
        )
    return arr  # the caller checks the range for its storage dtype


def validate_ids(ids: list[str] | None, n: int, what: str = "ids") -> list[str]:
    if ids is None:
        return [str(i) for i in range(n)]
    ids = [str(x) for x in ids]
    if len(ids) != n:
        raise GradstoreError(
            f"{len(ids)} {what} given for {n} vector rows; give exactly one id per row"
        )
    if any(x == "" for x in ids):
        raise GradstoreError(
            f"{what} contain an empty id (row {ids.index('')}); ids must be non-empty"
        )
    dup = [x for x, c in Counter(ids).items() if c > 1]
    if dup:
        raise GradstoreError(
            f"{what} are not unique: {len(dup)} duplicated (e.g. {dup[:3]}); "
            "each row needs its own id"
        )
    return ids


def validate_subtasks(subtasks: list[str] | None, n: int) -> list[str] | None:
    if subtasks is None:
        return None
    subtasks = [str(x) for x in subtasks]
    if len(subtasks) != n:
        raise GradstoreError(
            f"{len(subtasks)} subtask labels given for {n} vector rows; give one label per row"
        )
    return subtasks
