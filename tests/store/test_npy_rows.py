"""Import reads .npy files by rows (bounded memory): the rows read equal numpy's."""

from __future__ import annotations

import numpy as np
import pytest

import gradstore
from gradstore.errors import GradstoreError
from gradstore.store.importing import NpyRows, read_vector_file


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int32])
def test_rows_equal_numpy(tmp_path, rng, dtype):
    X = (rng.standard_normal((257, 9)) * 10).astype(dtype)
    np.save(tmp_path / "x.npy", X)
    arr = read_vector_file(tmp_path / "x.npy")
    assert isinstance(arr, NpyRows) and arr.shape == X.shape and arr.dtype == X.dtype
    np.testing.assert_array_equal(arr[10:100], X[10:100])
    np.testing.assert_array_equal(arr[250:1000], X[250:])
    for rows in (np.array([5, 3, 4, 3]), np.array([0, 256, 128]), np.array([], dtype=int)):
        np.testing.assert_array_equal(arr[rows], X[rows])


def test_fortran_order_is_loaded_whole(tmp_path, rng):
    X = np.asfortranarray(rng.standard_normal((20, 4)).astype(np.float32))
    np.save(tmp_path / "f.npy", X)
    got = read_vector_file(tmp_path / "f.npy")
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, X)


def test_a_short_file_is_refused_and_nothing_stored(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.standard_normal((3000, 16)).astype(np.float32))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[: len(raw) - 1000])
    store = gradstore.open(tmp_path / "s")
    with pytest.raises(GradstoreError, match="shorter than its header"):
        store.import_vectors("pool", read_vector_file(tmp_path / "x.npy"))
    assert store.tables() == []


def test_import_by_ids_from_a_file_in_another_order(tmp_path, rng):
    X0 = rng.standard_normal((600, 8)).astype(np.float32)
    X1 = rng.standard_normal((600, 8)).astype(np.float32)
    ids = [f"e{i}" for i in range(600)]
    perm = rng.permutation(600)
    np.save(tmp_path / "c1.npy", X1[perm])
    store = gradstore.open(tmp_path / "s")
    store.import_vectors("pool", X0, "0", ids=ids)
    store.import_vectors("pool", read_vector_file(tmp_path / "c1.npy"), "1",
                         ids=[ids[i] for i in perm])
    np.testing.assert_array_equal(store.vectors("pool", "1")[1],
                                  X1.astype(np.float16).astype(np.float32))
