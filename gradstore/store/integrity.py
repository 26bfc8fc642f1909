"""Checksums of stored vectors, and the error a damaged table raises.

Every vector column ``vec_<t>`` (and ``vec_<t>_<type>``) has a companion ``crc_<t>`` (int64)
written with it: a 64-bit checksum of the row's stored bytes and of its stored norm
(``norm_<t>``, which scans read): the bytes read as 8-byte words, times fixed odd weights
(:func:`checksum_weights`, defined in integer arithmetic here so that no dependency can
move them), plus the norm's float32 bits times one more, summed modulo 2^64. Any change of
one word changes the sum; random damage to several cancels with probability about 2^-64. It detects
corruption, not an adversary. Values were checked finite when written, so a row that
matches its checksum is finite. A row costs one multiply-add per 8 bytes; reads verify it
once per pass (loading a pool into RAM, reading a target, the first pass of a selection
run; benchmarks/results/integrity_cost.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from gradstore.errors import GradstoreError

CHECKSUM_SEED = 0x67726164  # "grad": the weights never change, or old checksums break
_weights_cache: dict[int, np.ndarray] = {}
_M32, _M64, _M128 = 2**32 - 1, 2**64 - 1, 2**128 - 1
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645


class DamagedTable(GradstoreError):
    """Stored values that do not match their checksums, are not finite, or cannot be read."""


READ_ERRORS = (OSError, RuntimeError, ValueError, pa.ArrowException)
"""What Lance and LanceDB raise when a table's files are missing, truncated or garbled (a
missing data file is an ArrowInvalid, a missing manifest a ValueError "not found")."""


def read_failure(exc: BaseException) -> bool:
    """A failure of Lance on a table's files: one of :data:`READ_ERRORS`, or a panic of its
    Rust code on a garbled manifest (``pyo3_runtime.PanicException``, a BaseException whose
    class exists only once raised, or ``pyo3_async_runtimes.RustPanic`` from LanceDB);
    not gradstore's own errors, not Ctrl-C."""
    if isinstance(exc, GradstoreError):
        return False
    return isinstance(exc, READ_ERRORS) or type(exc).__module__.startswith("pyo3")


def first_line(exc: BaseException) -> str:
    """The first line of a Lance error, without the Rust source locations it carries."""
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", str(exc)).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def unreadable(table: str, exc: BaseException) -> DamagedTable:
    """A Lance read that failed on the table's files, as the user's error to act on."""
    first = first_line(exc)
    redo = "" if table.startswith("_") else " or re-ingest it"
    return DamagedTable(
        f"table {table!r} cannot be read ({first}); its files are damaged or missing: run "
        f"`gradstore verify STORE {table}`, then `gradstore restore STORE {table}` (an earlier "
        f"version){redo}"
    )


@contextmanager
def reading(table: str) -> Iterator[None]:
    """Reads inside the block that fail on the table's files raise :class:`DamagedTable`
    (gradstore's own errors pass through unchanged)."""
    try:
        yield
    except GradstoreError:
        raise
    except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
        if not read_failure(exc):
            raise
        raise unreadable(table, exc) from None


LEDGER_DIR = ".versions"


def schema_hash(schema: pa.Schema) -> str:
    """A hash of a table's schema: columns, types and metadata (its provenance: checkpoints,
    learning rates, projection, ingestion state)."""
    def items(md) -> list:  # metadata maps come back in any order
        return sorted((bytes(k).hex(), bytes(v).hex()) for k, v in (md or {}).items())

    canon = [items(schema.metadata)] + [[f.name, str(f.type), items(f.metadata)]
                                        for f in schema]
    return hashlib.blake2b(json.dumps(canon).encode(), digest_size=16).hexdigest()


class VersionLedger:
    """The newest version of each table gradstore has seen committed, and its row count, in
    ``STORE/.versions/<table>.json`` (outside Lance's own files).

    Lance opens the newest manifest it finds: when that manifest is deleted or unreadable, it
    silently opens an older version, and a selection would run on fewer rows or checkpoints.
    Every commit (and every read that sees a newer version) records the version; opening a
    table at an older version than recorded is damage. Local stores only; a store that
    cannot be written (read-only) is checked, not updated.
    """

    def __init__(self, store_uri: str) -> None:
        self.root = None if "://" in store_uri else Path(store_uri) / LEDGER_DIR

    def _path(self, table: str) -> Path:
        return self.root / f"{table}.json"

    def seen(self, table: str) -> dict | None:
        """What was recorded for ``table``; read it *before* opening the table, so that a
        version committed after this read (by another process) cannot look like a rollback."""
        if self.root is None:
            return None
        try:
            seen = json.loads(self._path(table).read_text())
        except (OSError, ValueError):
            return None
        return seen if isinstance(seen, dict) and "version" in seen else None

    def check(self, table: str, seen: dict | None, version: int, rows: int,
              schema: pa.Schema) -> None:
        """Raise :class:`DamagedTable` when ``table`` opened older than ``seen`` (what
        :meth:`seen` returned before the table was opened), or with other rows or provenance
        at the recorded version; record a newer version."""
        if self.root is None:
            return
        meta = schema_hash(schema)
        if seen is not None and version < seen["version"]:
            raise DamagedTable(
                f"table {table!r} opens at version {version}, but version {seen['version']} "
                f"({seen['rows']} rows) was committed: its newest manifest is missing or "
                f"damaged; `gradstore restore STORE {table}` lists the versions left (restore "
                "one, then rerun what wrote the newer ones)"
            )
        if seen is not None and version == seen["version"] and (
                rows != seen["rows"] or seen.get("meta", meta) != meta):
            raise DamagedTable(
                f"table {table!r} version {version} differs from what was committed ("
                + (f"{rows} rows, {seen['rows']} committed" if rows != seen["rows"]
                   else "its provenance changed")
                + f"): its manifest is damaged; `gradstore restore STORE {table}`"
            )
        if seen is None or version > seen["version"]:
            self._write(table, {"version": version, "rows": rows, "meta": meta},
                        only_newer=True)

    def record(self, table: str, version: int, rows: int, schema: pa.Schema) -> None:
        """Record ``version`` whatever was recorded before (after a restore)."""
        if self.root is not None:
            self._write(table, {"version": version, "rows": rows,
                                "meta": schema_hash(schema)})

    def _write(self, table: str, value: dict, only_newer: bool = False) -> None:
        """Replace the record (``only_newer``: unless another process recorded a version at
        least as new meanwhile), under a lock so that two writers cannot interleave."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / f"{table}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError:
            return  # a read-only store: checked, not updated
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self.seen(table)
            if only_newer and now is not None and now["version"] >= value["version"]:
                return
            tmp = self._path(table).with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, self._path(table))
        except OSError:
            pass
        finally:
            os.close(fd)

    def forget(self, table: str) -> None:
        """The table was dropped (a new one of that name starts at version 1)."""
        if self.root is not None:
            self._path(table).unlink(missing_ok=True)


def file_problems(dataset) -> list[str]:
    """What the manifest alone reveals on a local table: data files missing or not the size
    the manifest records. Cheap (one stat per file); empty when none or not local."""
    if "://" in dataset.uri and not dataset.uri.startswith("file://"):
        return []
    root = Path(dataset.uri.removeprefix("file://"))
    problems = []
    for frag in dataset.get_fragments():
        for f in frag.metadata.files:
            path = root / "data" / f.path
            if not path.exists():
                problems.append(f"fragment {frag.fragment_id}: data file {f.path} is missing")
            elif f.file_size_bytes and path.stat().st_size != f.file_size_bytes:
                problems.append(f"fragment {frag.fragment_id}: data file {f.path} has "
                                f"{path.stat().st_size} bytes, the manifest says "
                                f"{f.file_size_bytes}")
    return problems


ID_CHECKSUM = "crc_id"
ROW_CHECKSUM = "crc_row"
"""Covers ``row``, the example's position in its data file (which maps the vectors of a
checkpoint added later onto the right rows); tables written before it have none."""
"""The column holding a checksum of each row's id and subtask (they decide which example a
selection names and how LESS groups a target)."""

NORM_TOLERANCE = 1e-4
"""Relative difference allowed between a stored row norm and the norm of the stored vector
(both float32 from the same values; they differ only by summation order)."""


def text_checksums(ids: list[str], subtasks: list[str | None]) -> np.ndarray:
    """One int64 per row: the first 8 bytes of BLAKE2b over ``id``, NUL, ``subtask``."""
    out = np.empty(len(ids), dtype=np.int64)
    for i, (a, b) in enumerate(zip(ids, subtasks, strict=True)):
        text = f"{a}\x00{'' if b is None else b}".encode()
        out[i] = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little",
                                signed=True)
    return out


def row_index_checksums(ids: list[str], rows: np.ndarray) -> np.ndarray:
    """One int64 per row: the first 8 bytes of BLAKE2b over ``id``, NUL, ``row`` (decimal)."""
    out = np.empty(len(ids), dtype=np.int64)
    for i, (a, r) in enumerate(zip(ids, np.asarray(rows).tolist(), strict=True)):
        digest = hashlib.blake2b(f"{a}\x00{int(r)}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little", signed=True)
    return out


def bad_norms(stored: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Positions whose stored norm is not the norm of the stored vector."""
    true = np.linalg.norm(stored.astype(np.float32), axis=1)
    ok = np.abs(norms - true) <= NORM_TOLERANCE * true + 1e-6
    return np.flatnonzero(~ok)


def _seed_words(entropy: int, count: int) -> list[int]:
    """``count`` 32-bit words from ``entropy`` by the SeedSequence hashing of O'Neill's
    seed_seq (as NumPy's ``SeedSequence(entropy).generate_state`` does, pool of 4 words)."""
    ent = []
    while True:
        ent.append(entropy & _M32)
        entropy >>= 32
        if not entropy:
            break
    mult = [0x43B0D7E5]

    def hashmix(value: int) -> int:
        value ^= mult[0]
        mult[0] = (mult[0] * 0x931E8875) & _M32
        value = (value * mult[0]) & _M32
        return value ^ (value >> 16)

    def mix(x: int, y: int) -> int:
        r = (0xCA01F9DD * x - 0x4973F715 * y) & _M32
        return r ^ (r >> 16)

    pool = [hashmix(ent[i] if i < len(ent) else 0) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, len(ent)):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(ent[src]))
    out, h = [], 0x8B51F9DD
    for i in range(count):
        value = pool[i % 4] ^ h
        h = (h * 0x58F38DED) & _M32
        value = (value * h) & _M32
        out.append(value ^ (value >> 16))
    return out


def checksum_weights(words: int) -> np.ndarray:
    """The odd 64-bit weights of a row's first ``words`` 8-byte words.

    Defined here, with integer arithmetic only, so that no dependency can change them (every
    stored checksum depends on them): the outputs x_1, x_2, ... of the PCG64 generator
    (128-bit LCG, multiplier 0x2360ED051FC65DA44385DF649FCCF645, XSL-RR output) seeded from
    :data:`CHECKSUM_SEED` through SeedSequence, each mapped to ``(x >> 2) * 2 + 1``. These
    are the weights stores were first written with (then drawn as
    ``numpy.random.default_rng(CHECKSUM_SEED).integers(0, 2**62, words) * 2 + 1``); the tests
    pin them as literals.
    """
    w = _weights_cache.get(words)
    if w is None:
        v = _seed_words(CHECKSUM_SEED, 8)
        state_words = [v[2 * i] | (v[2 * i + 1] << 32) for i in range(4)]
        seed = (state_words[0] << 64) | state_words[1]
        inc = ((((state_words[2] << 64) | state_words[3]) << 1) | 1) & _M128
        s = (inc * 1) & _M128  # state 0, one step; add the seed; one more step
        s = ((s + seed) * _PCG_MULT + inc) & _M128
        out = []
        for _ in range(words):
            s = (s * _PCG_MULT + inc) & _M128
            rot = s >> 122
            x = ((s >> 64) ^ s) & _M64
            x = ((x >> rot) | (x << (64 - rot))) & _M64
            out.append((x >> 2) * 2 + 1)
        w = np.asarray(out, dtype=np.uint64)
        _weights_cache[words] = w
    return w


NORM_WEIGHT = np.uint64(0x9E3779B97F4A7C15)  # odd: the stored norm's bits enter the sum once


def row_checksums(stored: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """One int64 checksum per row of an (n, d) float16/float32 array, as stored, and of
    the rows' stored float32 norms when given."""
    base = _vector_sums(stored)
    if norms is None:
        return base.view(np.int64)
    bits = np.ascontiguousarray(norms, dtype=np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        return (base + bits * NORM_WEIGHT).view(np.int64)


def _vector_sums(stored: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(stored)
    raw = arr.view(np.uint8).reshape(arr.shape[0], -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.pad(raw, ((0, 0), (0, pad)))
    words = np.ascontiguousarray(raw).view(np.uint64)
    with np.errstate(over="ignore"):
        return (words * checksum_weights(words.shape[1])).sum(axis=1, dtype=np.uint64)


def bad_rows(stored: np.ndarray, checksums: np.ndarray | None,
             norms: np.ndarray | None = None) -> np.ndarray:
    """Positions of rows that do not match their checksums (with their stored ``norms``);
    without checksums (a table written before them), rows whose values are not finite or
    whose stored norm is not theirs."""
    if checksums is not None:
        got = row_checksums(stored, norms)
        return np.flatnonzero(got != np.asarray(checksums, dtype=np.int64))
    bad = ~np.isfinite(stored.astype(np.float32, copy=False)).all(axis=1)
    if norms is not None:
        bad[bad_norms(stored, norms)] = True
    return np.flatnonzero(bad)


def damage(table: str, column: str, rows: np.ndarray, first_row: int = 0) -> DamagedTable:
    """The error naming a table's damaged rows (storage positions) and what to do."""
    where = ", ".join(str(first_row + int(r)) for r in rows[:5]) + (" ..." if len(rows) > 5
                                                                     else "")
    return DamagedTable(
        f"table {table!r} is damaged: {len(rows)} row(s) of {column} fail their checksum or "
        f"are not finite (storage rows {where}); run `gradstore verify STORE {table}` to see "
        "all of it, then --drop-damaged and rerun the table's ingest, or `gradstore restore`"
    )
