"""Reading and validating vectors before anything is written."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from gradstore.errors import GradstoreError


def _as_matrix(obj: object, source: str) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if isinstance(obj, np.ndarray):
        return obj
    if (torch is not None and isinstance(obj, (list, tuple)) and obj
            and all(isinstance(x, torch.Tensor) for x in obj)):
        return torch.cat([x.detach().cpu().float().reshape(x.shape[0], -1) for x in obj]).numpy()
    if isinstance(obj, dict):
        kinds = (np.ndarray,) if torch is None else (torch.Tensor, np.ndarray)
        tensors = {k: v for k, v in obj.items() if isinstance(v, kinds)}
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
        if suffix == ".npy":  # read in blocks as the import writes them
            arr = NpyRows.open(p)
        elif suffix in (".pt", ".pth", ".bin"):
            arr = _as_matrix(_torch_load(p), str(p))
        else:
            raise GradstoreError(f"vector file {str(p)!r} has suffix {suffix!r}; use .npy or .pt")
    except GradstoreError:
        raise
    except Exception as exc:  # corrupt or foreign file
        raise GradstoreError(f"cannot read vectors from {str(p)!r}: {exc}") from None
    return arr


class NpyRows:
    """A 2-D ``.npy`` file whose rows are read when indexed (``arr[a:b]``, ``arr[rows]``), so
    an import holds one block, not the file (a memory map would count the whole file in the
    process's resident memory once read)."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype, offset: int):
        self.path, self.shape, self.dtype, self.offset = path, shape, dtype, offset
        self.ndim = len(shape)
        self._row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    @classmethod
    def open(cls, path: Path) -> NpyRows | np.ndarray:
        """The file as rows read on demand; a file numpy lays out otherwise (Fortran order,
        not 2-D, object dtype) loaded whole."""
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
        if fortran or len(shape) != 2 or dtype.hasobject:
            return np.load(path, allow_pickle=False)
        return cls(path, shape, dtype, offset)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        count = max(0, stop - start)
        out = np.fromfile(self.path, dtype=self.dtype, count=count * self.shape[1],
                          offset=self.offset + start * self._row)
        if out.size != count * self.shape[1]:
            raise GradstoreError(f"vector file {str(self.path)!r} is shorter than its header "
                                 "says; write it again")
        return out.reshape(count, self.shape[1])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise TypeError("NpyRows takes contiguous slices")
            return self._read(start, stop)
        rows = np.asarray(key, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * rows.size:  # close together: one read of their span
            return self._read(lo, hi)[rows - lo]
        return np.stack([self._read(int(r), int(r) + 1)[0] for r in rows])


def _torch_load(p: Path):
    """A tensor file, memory-mapped where its format allows (torch's zip format)."""
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
        return torch.load(p, map_location="cpu", weights_only=True)


CHECK_ROWS = 8192  # rows per block when checking a (possibly memory-mapped) array


def blockwise_max_abs(arr: np.ndarray) -> float:
    """max |arr| without a full-size temporary."""
    return max(float(np.abs(np.asarray(arr[s:s + CHECK_ROWS], dtype=np.float32)).max())
               for s in range(0, arr.shape[0], CHECK_ROWS))


def read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise GradstoreError(f"{what} file {str(p)!r} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def validate_vectors(vectors: object, what: str = "vectors") -> np.ndarray:
    """Check shape, dtype and finiteness, block by block; return the (N, d) array as it is
    (a memory-mapped file stays mapped: writers convert it block by block)."""
    arr = vectors if isinstance(vectors, np.ndarray | NpyRows) else _as_matrix(vectors, what)
    if arr.ndim != 2:
        raise GradstoreError(
            f"{what} must be a 2-D (rows x dims) matrix, got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise GradstoreError(f"{what} are empty (shape {tuple(arr.shape)}); nothing to import")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise GradstoreError(f"{what} have dtype {arr.dtype}; expected float16 or float32")
    finite = np.concatenate([np.isfinite(np.asarray(arr[s:s + CHECK_ROWS])).all(1)
                             for s in range(0, arr.shape[0], CHECK_ROWS)])
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
