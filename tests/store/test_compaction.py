"""Compaction keeps the last uncompacted version, so that `restore` has something to fall
back to when the compacted files are damaged."""

from __future__ import annotations

import numpy as np

import gradstore
from gradstore.store.database import RowBlock
from tests.cli.test_cli import run

N, D = 30, 8


def test_restore_after_compaction_falls_back_to_the_uncompacted_version(tmp_path):
    path = tmp_path / "store"
    st = gradstore.open(path)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3 * N, D)).astype(np.float32)
    st.import_vectors("pool", X[:N], ids=[f"p{i}" for i in range(N)])
    db = st.database
    for b in (1, 2):  # two more appends: three fragments
        rows = np.arange(b * N, (b + 1) * N)
        db.append_rows("pool", RowBlock(ids=[f"p{i}" for i in rows], rows=rows.tolist(),
                                        vectors=[X[rows]]))
    before = db.dataset("pool").version
    assert len(db.dataset("pool").get_fragments()) == 3
    db.compact("pool")
    ds = db.dataset("pool")
    assert len(ds.get_fragments()) == 1 and ds.version > before
    kept = sorted(v["version"] for v in ds.versions())
    assert kept[0] == before  # older versions pruned, the uncompacted one kept
    # the compacted data files are lost: the table is damaged, the old version restores it
    for f in (path / "pool.lance" / "data").iterdir():
        if f.name not in {fr.data_files()[0].path for fr in
                          ds.checkout_version(before).get_fragments()}:
            f.unlink()
    res = run("verify", path, "pool", ok=False)
    assert res.returncode == 2
    run("restore", path, "pool", "--version", str(before))
    ids, got = gradstore.open(path).vectors("pool")
    want = X.astype(np.float16).astype(np.float32)  # stored as float16
    np.testing.assert_array_equal(got[np.argsort([int(i[1:]) for i in ids])], want)
