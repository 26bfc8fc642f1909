"""A streamed pass reads ahead in a thread (``prefetched``): the block the caller holds is
never overwritten by the read-ahead, errors in the reader reach the caller, and a pass the
caller abandons stops its thread."""

import threading
import time

import numpy as np
import pytest

import gradstore
from gradstore.errors import GradstoreError
from gradstore.store.lance_source import PREFETCH, prefetched


def reader_threads() -> int:
    return sum(t.name == "gradstore-prefetch" for t in threading.enumerate())


@pytest.fixture
def source(tmp_path, rng):
    store = gradstore.open(tmp_path / "s")
    X = rng.standard_normal((3000, 2, 24)).astype(np.float32)
    for t in range(2):
        store.import_vectors("pool", X[:, t], checkpoint=str(t), vector_dtype="float32")
    return store.source("pool", mode="stream"), X.reshape(3000, -1)


def test_the_held_block_survives_the_read_ahead(source):
    src, X = source
    seen = 0
    for start, block in src.iter_blocks(100):
        first = block.numpy().copy()
        time.sleep(0.01)  # the reader fills the next PREFETCH + 1 buffers meanwhile
        np.testing.assert_array_equal(block.numpy(), first)
        np.testing.assert_array_equal(first, X[start : start + len(first)])
        seen += len(first)
    assert seen == 3000 and PREFETCH >= 1


def test_an_abandoned_pass_stops_its_reader(source):
    src, _ = source
    before = reader_threads()
    for i, _ in enumerate(src.iter_blocks(100)):
        if i == 3:
            break
    deadline = time.time() + 5
    while reader_threads() > before and time.time() < deadline:
        time.sleep(0.01)
    assert reader_threads() == before


def test_an_error_in_the_reader_reaches_the_caller():
    def items():
        yield 1
        yield 2
        raise GradstoreError("table 'pool' is damaged")

    got = []
    with pytest.raises(GradstoreError, match="damaged"):
        for item in prefetched(items(), 2):
            got.append(item)
    assert got == [1, 2]
    assert list(prefetched(iter(range(7)), 1)) == list(range(7))
