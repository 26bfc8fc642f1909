"""A store written by an earlier gradstore (before targets held two gradient types) opens,
reads and selects; its stored selection is intact (``tests/fixtures/store_v0``, written by
commit 645d657 from seeded vectors: see the fixture's README)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

import gradstore

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_v0"
OLD_LESS_IDS = ["ex9", "ex18", "ex8", "ex19", "ex61", "ex75", "ex54", "ex108", "ex26", "ex16"]


@pytest.fixture
def old(tmp_path):
    path = tmp_path / "store"
    shutil.copytree(FIXTURE, path)
    return gradstore.open(path, create=False)


def test_old_store_opens_with_its_selection(old):
    assert old.tables() == ["pool", "target"]
    meta = old.meta("target")
    assert meta.grad_types == ["sgd"] and meta.extra_types == []
    assert old.meta("pool").checkpoint_names == ["checkpoint-1", "checkpoint-2"]
    (sel,) = old.selections()
    assert sel.method == "less" and sel.ids == OLD_LESS_IDS
    assert "target_grad_type" not in sel.params  # written before the field existed
    assert old.stop_note(sel) is None
    ids, X = old.vectors("pool")
    assert len(ids) == 120 and X.shape == (120, 32) and np.isfinite(X).all()


def test_old_store_selects_the_same_and_with_every_method(old):
    again = old.select("pool", target="target", budget=10, method="less")
    assert again.ids == OLD_LESS_IDS  # the same answer as the version that wrote it
    for method in ("gtp", "gtp-paper", "omp", "random"):
        sel = old.select("pool", target="target", budget=10, method=method)
        assert 1 <= len(sel.ids) <= 10
        assert sel.params["target_grad_type"] == "sgd"
    full = old.select("pool", target="target", budget=10)  # the default fills the budget
    assert len(full.ids) == 10
    assert "--grad-type adam,sgd" in old.stop_note(full)  # the sgd-only target is named
    assert len(old.selections()) == 1 + 5 + 1
