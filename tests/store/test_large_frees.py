"""Large allocations are mapped on their own (and returned when freed) only while a
memory-bounded operation runs; afterwards they come from glibc's heaps again.

Each check runs in a fresh process: whether a block is mapped also depends on the free
space a process's heaps hold (a request the heap can serve never reaches the threshold)."""

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest


def has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc 2.33 and later
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not has_mallinfo2(),
    reason="glibc's mallopt and mallinfo2 (glibc >= 2.33)")

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2
LIBC.malloc.restype = ctypes.c_void_p
LIBC.free.argtypes = [ctypes.c_void_p]


def free_in_heaps():
    return LIBC.mallinfo2().fordblks


def mapped(nbytes):
    before = LIBC.mallinfo2().hblks
    p = LIBC.malloc(nbytes)
    try:
        return LIBC.mallinfo2().hblks == before + 1
    finally:
        LIBC.free(p)
"""


def probe(body: str, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT)) + body,
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_two_megabytes_are_mapped_only_inside(tmp_path):
    out = probe("""
from gradstore.store.allocator import large_frees_released
with large_frees_released():  # a block no free chunk of the heaps can hold
    inside = mapped(free_in_heaps() + (2 << 20))
print(inside, mapped(2 << 20), mapped(64 << 20))
""", tmp_path)
    assert out == "True False True"  # 64 MB: above glibc's own largest threshold, as always


def test_import_and_streamed_selection_leave_the_heaps_serving_large_blocks(tmp_path):
    out = probe("""
import numpy as np
import gradstore
store = gradstore.open(sys.argv[1] + "/s")
X = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
store.import_vectors("pool", X)
after_import = mapped(24 << 20)
sel = store.select("pool", None, budget=10, mode="stream", memory_budget=1 << 20)
print(len(sel.ids), after_import, mapped(24 << 20))
""", tmp_path)
    assert out == "10 False False"
