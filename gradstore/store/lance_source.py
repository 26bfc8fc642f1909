"""A gradient source that streams a Lance table's vector columns (bounded memory)."""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import torch

from gradstore.store.allocator import release_free_pages
from gradstore.store.integrity import (
    bad_rows,
    damage,
    read_failure,
    unreadable,
)
from gradstore.store.meta import checksum_of, fixed_list_to_numpy, norm_of

TAKE_ROWS = 1024
"""Rows a ``take`` reads from Lance at a time (bounds the decoded table it holds)."""
SMALL_TAKE_ROWS = 256
"""``TAKE_ROWS`` under a small memory budget (``ranged_reads``): Lance's reading threads
keep freed buffers in their own heaps, so smaller takes leave less resident after them."""
PREFETCH = 2
"""Blocks a streamed pass reads ahead of its caller (each a block_rows x T*d buffer)."""


def prefetched(items: Iterator, ahead: int) -> Iterator:
    """``items``, produced by a thread that runs up to ``ahead`` items ahead of the caller.
    An error in the thread is raised here; closing the generator stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            q.put((exc, None))

    thread = threading.Thread(target=produce, name="gradstore-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let it see the stop (it may wait on a full queue)
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _tensor(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrow buffers
        return torch.from_numpy(arr)


class LanceSource:
    """Stream vectors of one table: record batches of ``block_rows`` rows, in row order.

    ``iter_blocks`` yields one reused buffer in the stored dtype (a plain copy of the
    decoded columns, side by side): a block is valid until the next one is read.
    """

    block_rows = 512  # smaller reads than Lance's default batch: faster passes (storage.md)
    scan_threads = 1  # leave the other core to Lance's decode threads
    io_buffer_size: int | None = None
    """Bytes Lance may read ahead of a scan (None: Lance's default, 2 GiB); a streamed pool
    under a memory budget gets a share of it (docs/storage.md)."""
    spill_path: Path | None = None
    """A restricted source (``restricted``) whose passes will be many: its first complete
    pass also writes the rows it read, side by side in the stored dtype, to this file (the
    caller's, removed by the caller), and every later pass reads them back from it in row
    order. Rows a query keeps that lie scattered over the table cost Lance a read by
    position each, every pass (about as much as a full scan for a tenth of the rows,
    docs/storage.md); read back in order they cost a sequential read. The file holds
    ``num_rows * T * d`` values; a write that fails (no space) drops it and the passes go
    on from Lance."""
    ranged_reads = False
    """Read each block as a ``take`` of its row range instead of through Lance's scanner:
    slower per pass, but it holds about one block, where the scanner decodes whole pages
    ahead of the caller whatever its read-ahead setting. For small memory budgets
    (``SCANNER_MIN_BUDGET``; measured in docs/storage.md)."""

    def __init__(
        self,
        dataset: lance.LanceDataset,
        columns: list[str],
        dim: int,
        rows: tuple[int, int] | None = None,
        norms: np.ndarray | None = None,
        name: str = "?",
        verify: bool = True,
        subset: np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
        self.columns = columns
        self.name = name
        names = set(dataset.schema.names)
        self.checksums = [checksum_of(c) if checksum_of(c) in names else None for c in columns]
        self.verify_next_pass = verify
        """Check the next full pass against the checksums (and for finite values); a pass
        that completes turns it off, so a selection run verifies its pool once."""
        self._dim = dim
        total = dataset.count_rows()
        # a contiguous range of storage positions (one part of a partitioned pool)
        self._start, stop = (0, total) if rows is None else rows
        if not 0 <= self._start <= stop <= total:
            raise ValueError(f"rows {rows} outside the table's {total} rows")
        self._n = stop - self._start
        self._subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        """Only these storage positions (sorted; a query's allowed rows), read by position:
        no other row's vectors are read."""
        if self._subset is not None:
            self._start, self._n = 0, len(self._subset)
        self._whole = self._n == total and self._subset is None
        self._norms: np.ndarray | None = norms
        self._piece_cache: list | None = None
        self._spilled = False  # spill_path holds every row (a pass wrote it to the end)
        value_type = dataset.schema.field(columns[0]).type.value_type
        self.dtype = torch.float16 if value_type == pa.float16() else torch.float32

    def part(self, start: int, stop: int, norms: np.ndarray | None = None) -> LanceSource:
        """The rows ``start:stop`` of this source as a source of their own."""
        if norms is None and self._norms is not None:
            norms = self._norms[start:stop]
        if self._subset is not None:
            return self._like(None, norms, self._subset[start:stop])
        return self._like((self._start + start, self._start + stop), norms, None)

    def restricted(self, rows: np.ndarray) -> LanceSource:
        """Only the rows at positions ``rows`` of this source (sorted), as a source of their
        own: its passes read those rows' vectors by position and no others."""
        rows = np.asarray(rows, dtype=np.int64)
        norms = None if self._norms is None else self._norms[rows]
        return self._like(None, norms, self._positions(rows))

    def _like(self, rows, norms, subset) -> LanceSource:
        out = LanceSource(self.dataset, self.columns, self._dim, rows, norms, self.name,
                          self.verify_next_pass, subset)
        out.io_buffer_size, out.ranged_reads = self.io_buffer_size, self.ranged_reads
        return out

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """Storage positions of this source's rows ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._subset[rows] if self._subset is not None else self._start + rows

    def _pieces(self) -> list[tuple[lance.LanceFragment, int, int]]:
        """(fragment, offset, count) pieces covering this source's rows, in storage order."""
        if self._piece_cache is not None:
            return self._piece_cache
        out, pos = [], 0
        stop = self._start + self._n
        for frag in self.dataset.get_fragments():
            n = frag.count_rows()
            lo, hi = max(pos, self._start), min(pos + n, stop)
            if lo < hi:
                out.append((frag, lo - pos, hi - lo))
            pos += n
            if pos >= stop:
                break
        self._piece_cache = out
        return out

    def _batches(self, columns: list[str], batch_size: int):
        """Record batches of ``columns`` in row order; a file Lance cannot read is reported
        as damage (exit status 2), not a traceback."""
        try:
            if self._subset is not None:
                for s in range(0, self._n, batch_size):
                    yield from self.dataset.take(self._subset[s : s + batch_size],
                                                 columns=columns).to_batches()
                return
            if self.ranged_reads:
                stop = self._start + self._n
                for s in range(self._start, stop, batch_size):
                    yield from self.dataset.take(np.arange(s, min(stop, s + batch_size)),
                                                 columns=columns).to_batches()
                return
            if self._whole:
                yield from self.dataset.scanner(
                    columns=columns, batch_size=batch_size, scan_in_order=True,
                    **self._io()).to_batches()
                return
            for frag, offset, count in self._pieces():
                yield from self.dataset.scanner(
                    columns=columns, fragments=[frag], offset=offset, limit=count,
                    batch_size=batch_size, scan_in_order=True, **self._io(),
                ).to_batches()
        except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
            if not read_failure(exc):
                raise
            raise unreadable(self.name, exc) from None

    def _io(self) -> dict:
        if self.io_buffer_size is None:
            return {}
        return {"io_buffer_size": self.io_buffer_size, "batch_readahead": 2,
                "fragment_readahead": 1}

    def _read_columns(self, verify: bool) -> list[str]:
        if not verify:
            return list(self.columns)
        return (list(self.columns) + [c for c in self.checksums if c is not None]
                + [norm_of(c) for c in self.columns])

    def _verify(self, batch: pa.RecordBatch | pa.Table, first_row: int,
                rows: np.ndarray | None = None) -> None:
        """Raise on the batch's damaged rows, named by storage position (``rows``: the
        positions of a batch that is not a contiguous run from ``first_row``)."""
        for col, crc in zip(self.columns, self.checksums, strict=True):
            arr = fixed_list_to_numpy(batch.column(col), self._dim)
            sums = None if crc is None else batch.column(crc).to_numpy(zero_copy_only=False)
            norms = batch.column(norm_of(col)).to_numpy(zero_copy_only=False)
            bad = bad_rows(arr, sums, norms)
            if len(bad):
                if rows is not None:  # storage positions
                    raise damage(self.name, col, self._positions(rows[bad]), 0)
                raise damage(self.name, col, bad, self._start + first_row)

    @property
    def num_rows(self) -> int:
        return self._n

    @property
    def positions(self) -> np.ndarray | None:
        """The storage positions a restricted source reads (None: a range of rows)."""
        return self._subset

    @property
    def num_checkpoints(self) -> int:
        return len(self.columns)

    @property
    def dim(self) -> int:
        return self._dim

    def row_norms(self) -> np.ndarray:
        if self._norms is None:
            names = [norm_of(c) for c in self.columns]
            schema = pa.schema([self.dataset.schema.field(n) for n in names])
            tbl = pa.Table.from_batches(list(self._batches(names, 65536)), schema=schema)
            self._norms = np.stack(
                [tbl.column(n).to_numpy().astype(np.float32) for n in names], 1
            ).reshape(self._n, len(names))
        return self._norms

    def _place(self, parts: list[torch.Tensor], out: torch.Tensor) -> None:
        """The checkpoints' (b, d) rows side by side into ``out`` (b, T*d)."""
        d = self._dim
        for t, part in enumerate(parts):
            out[:, t * d : (t + 1) * d].copy_(part)

    def _read_ahead(self, blocks, block_rows: int) -> Iterator:
        """One pass of ``blocks(block_rows, verify)`` read ahead by a thread (``PREFETCH``
        blocks), checked when the source's next pass is to be; a completed checked pass
        turns checking off."""
        verify = self.verify_next_pass
        yield from prefetched(blocks(block_rows, verify), PREFETCH)
        if verify:
            self.verify_next_pass = False

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Blocks in row order. A reader thread decodes, checks and copies the next block
        while the caller works on this one (``PREFETCH`` blocks ahead, each in its own
        buffer), so Lance's decode and the copy overlap the caller's matmul."""
        yield from self._read_ahead(self._filled_blocks, block_rows)

    def iter_parts(self, block_rows: int) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """Blocks in row order as each checkpoint's (b, d) rows, read zero-copy from
        Lance's decoded batch: for a scan that converts them to float32 anyway, this saves
        the side-by-side copy of :meth:`iter_blocks` (a block stays valid while it is
        held). Checked like :meth:`iter_blocks`, read ahead by the same thread."""
        yield from self._read_ahead(self._part_blocks, block_rows)

    def _part_blocks(self, block_rows: int, verify: bool
                     ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """``(start, parts)``: each batch's checkpoints as (b, d) tensors over Lance's
        arrays, the batch checked first when ``verify`` (or, once spilled, views of the
        rows read back from ``spill_path``)."""
        if self._spilled:
            d = self._dim
            for start, block in self._spilled_blocks(block_rows, None):
                yield start, [block[:, t * d : (t + 1) * d] for t in range(len(self.columns))]
            return
        if self.spill_path is not None and self._subset is not None:
            yield from self._spilling(self._lance_part_blocks(block_rows, verify))
            return
        yield from self._lance_part_blocks(block_rows, verify)

    def _spilling(self, blocks: Iterator[tuple[int, list[torch.Tensor]]]
                  ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """``blocks``, each also written to ``spill_path`` side by side; the file counts as
        spilled once the pass reaches the end."""
        try:
            out = open(self.spill_path, "wb")  # noqa: SIM115 - closed below, or on failure
        except OSError:
            out = None
        written = 0
        try:
            for start, parts in blocks:
                if out is not None:
                    try:
                        out.write(torch.cat(parts, 1).numpy().data)
                        written += parts[0].shape[0]
                    except OSError:  # no space: the passes go on from Lance
                        out.close()
                        out = None
                        self.spill_path.unlink(missing_ok=True)
                yield start, parts
        finally:
            if out is not None:
                out.close()
                self._spilled = written == self._n

    def _spilled_blocks(self, block_rows: int, bufs: list[torch.Tensor] | None
                        ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, block)`` read back from ``spill_path`` in row order: into ``bufs`` in
        turn, or each into a tensor of its own."""
        width = self.num_checkpoints * self._dim
        with open(self.spill_path, "rb") as f:
            for i, start in enumerate(range(0, self._n, block_rows)):
                b = min(block_rows, self._n - start)
                block = (torch.empty((b, width), dtype=self.dtype) if bufs is None
                         else bufs[i % len(bufs)][:b])
                if f.readinto(block.numpy()) != block.numel() * block.element_size():
                    raise OSError(f"{self.spill_path} ended early")
                yield start, block

    def _lance_part_blocks(self, block_rows: int, verify: bool
                           ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        start = 0
        for batch in self._batches(self._read_columns(verify), block_rows):
            if batch.num_rows == 0:
                continue
            if verify:
                self._verify(batch, start, None if self._subset is None else
                             np.arange(start, start + batch.num_rows))
            yield start, [_tensor(fixed_list_to_numpy(batch.column(c), self._dim))
                          for c in self.columns]
            start += batch.num_rows

    def _filled_blocks(self, block_rows: int, verify: bool
                       ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, block)``, cycling through ``PREFETCH + 2`` buffers: the caller's block,
        the queued ones and the one being filled are never the same buffer."""
        width = self.num_checkpoints * self._dim
        bufs = [torch.empty((block_rows, width), dtype=self.dtype)
                for _ in range(PREFETCH + 2)]
        if self._spilled:  # read straight into the buffers
            yield from self._spilled_blocks(block_rows, bufs)
            return
        for i, (start, parts) in enumerate(self._part_blocks(block_rows, verify)):
            b = parts[0].shape[0]
            slot = i % len(bufs)
            if b > bufs[slot].shape[0]:
                bufs[slot] = torch.empty((b, width), dtype=self.dtype)
            block = bufs[slot][:b]
            self._place(parts, block)
            yield start, block

    def take(self, rows: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rows at positions ``rows`` (in that order), (n, T*d) in ``dtype`` (the stored
        dtype, ``self.dtype``, holds them at half the size of float32 for a float16 table);
        read ``TAKE_ROWS`` (``SMALL_TAKE_ROWS``) at a time, in storage order, each written
        straight to its place."""
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty((len(rows), self.num_checkpoints * self._dim), dtype=dtype)
        order = np.argsort(rows, kind="stable")
        step = SMALL_TAKE_ROWS if self.ranged_reads else TAKE_ROWS
        for s in range(0, len(rows), step):
            part = order[s : s + step]
            try:
                tbl = self.dataset.take(self._positions(rows[part]),
                                        columns=self._read_columns(True))
            except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
                if not read_failure(exc):
                    raise
                raise unreadable(self.name, exc) from None
            self._verify(tbl, 0, rows[part])
            d = self._dim
            place = torch.from_numpy(part)
            for t, name in enumerate(self.columns):
                arr = _tensor(fixed_list_to_numpy(tbl.column(name), d))
                out[:, t * d : (t + 1) * d].index_copy_(0, place, arr.to(dtype))
        if self.ranged_reads:  # a small budget: what the reads freed goes back
            release_free_pages()
        return out

    def load(self) -> torch.Tensor:
        """The whole table as one (N, T*d) tensor in the stored dtype (the in-RAM mode)."""
        width = self.num_checkpoints * self._dim
        out = torch.empty((self._n, width), dtype=self.dtype)
        for start, parts in self._part_blocks(2048, True):
            self._place(parts, out[start : start + parts[0].shape[0]])
        return out

