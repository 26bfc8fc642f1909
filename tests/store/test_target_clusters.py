"""``--target-mode clusters``: a target that mixes two kinds of example in 70/30, without
labels, is matched as two equal parts (like ``joint`` with the kinds as labels)."""

from __future__ import annotations

import numpy as np
import pytest

import gradstore
from gradstore.selectors.clusters import target_clusters

D, N = 32, 400


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(4)
    a, b = np.zeros(D), np.zeros(D)
    a[0], b[1] = 1.0, 1.0
    kind = np.array(["a"] * (N // 2) + ["b"] * (N // 2))
    pool = np.where((kind == "a")[:, None], a, b) + 0.1 * rng.normal(size=(N, D))
    tkind = ["a"] * 14 + ["b"] * 6
    target = np.where((np.array(tkind) == "a")[:, None], a, b) + 0.1 * rng.normal(size=(20, D))
    st = gradstore.open(tmp_path / "s")
    st.import_vectors("pool", pool.astype(np.float32), ids=[f"{k}{i}" for i, k in enumerate(kind)])
    st.import_vectors("t", target.astype(np.float32), kind="target")
    st.import_vectors("t_labels", target.astype(np.float32), kind="target", subtasks=tkind)
    return st, target


def share_a(sel) -> float:
    return sum(i.startswith("a") for i in sel.ids) / len(sel.ids)


def test_clusters_find_the_two_kinds_and_weigh_them_equally(store):
    st, target = store
    labels = target_clusters(target / np.linalg.norm(target, axis=1, keepdims=True))
    assert labels.tolist() == [0] * 14 + [1] * 6  # the planted kinds, the larger first
    mean = st.select("pool", target="t", budget=40, method="gtp", tolerance=0, save=False)
    clusters = st.select("pool", target="t", budget=40, method="gtp", tolerance=0,
                         target_mode="clusters", save=False)
    joint = st.select("pool", target="t_labels", budget=40, method="gtp", tolerance=0,
                      target_mode="joint", save=False)
    assert share_a(mean) == pytest.approx(0.7, abs=0.1)  # the target's own shares
    assert share_a(clusters) == pytest.approx(0.5, abs=0.1)  # each part the same weight
    assert clusters.ids == joint.ids  # the same as telling it the kinds
    assert clusters.params["target_mode"] == "clusters"
