"""glibc's allocator around memory-bounded reads: large blocks served by their own mappings
(so that freeing one returns it to the system), and free heap pages handed back."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
LARGE_ALLOCATION = 1 << 20
SMALL_BUDGET_ALLOCATION = 1 << 18
"""The threshold under a small memory budget: a lower one holds less before the first
swap round, but maps and unmaps more blocks, so larger budgets keep ``LARGE_ALLOCATION``."""
HEAP_ALLOCATION_MAX = 32 << 20
"""glibc's largest dynamic mmap threshold on 64-bit systems (what it grows to by itself,
with a trim threshold of twice that)."""


def _glibc(function: str, *args: int) -> None:
    """Call one of glibc's allocator functions; a no-op where there is no glibc."""
    try:
        getattr(ctypes.CDLL("libc.so.6"), function)(*args)
    except (OSError, AttributeError):
        pass


def release_free_pages() -> None:
    """Return the free pages of every glibc heap to the system (``malloc_trim``): Lance's
    reading threads free their buffers into heaps of their own, which a trim threshold
    does not shrink. glibc only, a no-op elsewhere."""
    _glibc("malloc_trim", 0)


@contextmanager
def large_frees_released(threshold: int = LARGE_ALLOCATION) -> Iterator[None]:
    """Within: serve allocations of ``threshold`` bytes or more with their own
    mappings, so that freeing one returns it to the system. glibc raises that threshold
    each time such a block is freed and then keeps freed blocks in its heaps: the decode
    buffers of Lance's threads stay resident (see also ``SMALL_BUDGET_ALLOCATION``). For
    the memory-bounded work (a streamed selection, an import). Afterwards blocks up to
    ``HEAP_ALLOCATION_MAX`` come from the heaps again: left low, every later temporary of
    a selection in RAM in the same process would be mapped and unmapped.
    glibc only, a no-op elsewhere."""
    _glibc("mallopt", M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        _glibc("mallopt", M_MMAP_THRESHOLD, HEAP_ALLOCATION_MAX)
        _glibc("mallopt", M_TRIM_THRESHOLD, 2 * HEAP_ALLOCATION_MAX)
