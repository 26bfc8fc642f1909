"""Round-robin over a target's parts against the rule written out in plain numpy (cosines
of the raw per-checkpoint gradients, turns, the copy rule), on small pools with planted
copies; through a real store in RAM and streamed; and ``--target-mode parts`` against
separate gtp runs per part."""

import json

import numpy as np
import pytest

import gradstore
from gradstore.selectors import arrays
from gradstore.selectors import round_robin as round_robin_module
from gradstore.selectors.round_robin import PartsQuery, part_columns, round_robin
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool


def cosine_space(G: np.ndarray, lrs) -> np.ndarray:
    """Rows (n, T, d) -> (n, T*d) with sum_t eta_t cos(g_i^t, g_j^t) as inner products."""
    eta = np.asarray(lrs, dtype=np.float64) / np.sum(lrs)
    U = G / np.linalg.norm(G, axis=2, keepdims=True)
    return (U * np.sqrt(eta)[None, :, None]).reshape(len(G), -1)


def reference(G, Tg, labels, lrs, k, score):
    """The rule by plain loops: parts largest first (ties by label), each scores every row
    by its max (or mean) cosine with the part's rows; parts take turns; a row that is
    taken, or equal to or at cosine >= 0.99 with a taken row, is passed over."""
    P, Q = cosine_space(G, lrs), cosine_space(Tg, lrs)
    keys = sorted(set(labels), key=lambda s: (-labels.count(s), s))
    ranked = []
    for s in keys:
        members = Q[[j for j, lab in enumerate(labels) if lab == s]]
        sc = (P @ members.T).max(1) if score == "max" else P @ members.mean(0)
        ranked.append(sorted(range(len(P)), key=lambda i: (-np.float32(sc[i]), i)))
    taken, at = [], [0] * len(keys)
    live = [True] * len(keys)
    while len(taken) < k and any(live):
        for p in range(len(keys)):
            if len(taken) == k or not live[p]:
                continue
            while at[p] < len(P):
                i = ranked[p][at[p]]
                at[p] += 1
                if i in taken:
                    continue
                unit = P[i] / np.linalg.norm(P[i])
                if any(np.array_equal(G[i], G[j]) or unit @ P[j] / np.linalg.norm(P[j]) >= 0.99
                       for j in taken):
                    continue
                taken.append(i)
                break
            else:
                live[p] = False
    return taken


def flooded(seed: int, n: int = 300, copies: int = 10, T: int = 2, d: int = 24):
    """A pool whose first rows are exact and near copies of a few rows close to part a."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, T, d))
    lab = rng.integers(0, 3, n)
    G = centres[lab] + 0.8 * rng.standard_normal((n, T, d))
    base = centres[0] + 0.1 * rng.standard_normal((copies, T, d))
    G[: copies * 8] = np.repeat(base, 8, axis=0)
    G[copies * 8 : copies * 10] = np.repeat(base, 2, axis=0) + 1e-3 * rng.standard_normal(
        (copies * 2, T, d))
    Tg = np.concatenate([centres[0] + 0.5 * rng.standard_normal((6, T, d)),
                         centres[1] + 0.5 * rng.standard_normal((3, T, d)),
                         centres[2] + 0.5 * rng.standard_normal((1, T, d))])
    return G.astype(np.float32), Tg.astype(np.float32), ["a"] * 6 + ["b"] * 3 + ["c"]


def labelled_parts(seed: int, eta=None):
    """The flooded pool of ``seed`` in RAM, and its target's parts a, b, c in its space."""
    G, Tg, labels = flooded(seed)
    pool = StackedPool(TensorSource(G.reshape(len(G), -1), G.shape[1]), eta=eta)
    rows = pool.target_rows(Tg.reshape(len(Tg), -1))
    lab = np.array(labels)
    return G, Tg, labels, pool, [rows[lab == s] for s in ("a", "b", "c")]


@pytest.mark.parametrize("score", ["max", "mean"])
@pytest.mark.parametrize("k", [7, 40, 120])
def test_round_robin_equals_the_rule_by_hand(score, k):
    lrs = [2e-5, 1e-5]
    G, Tg, labels, pool, parts = labelled_parts(0, lrs)
    (res,) = round_robin(pool, [PartsQuery(part_columns(parts, score), k)])
    expected = reference(G.astype(np.float64), Tg.astype(np.float64), labels, lrs, k, score)
    assert res.rows.tolist() == expected
    assert len(set(res.rows.tolist())) == len(res.rows) == k
    # every part has its turn: counts differ by at most one while no part ran dry
    assert max(res.per_part) - min(res.per_part) <= 1
    assert res.copies_set_aside > 0  # the planted copies were met and passed over


def test_the_answer_does_not_depend_on_how_deep_the_first_scan_looked(monkeypatch):
    """With first lists only 2k deep, the planted copies exhaust part a's list: it is
    scanned again deeper, and the answer is the rule's."""
    G, Tg, labels, pool, parts = labelled_parts(0)
    monkeypatch.setattr(round_robin_module, "EXTRA_DEPTH", 0)
    (res,) = round_robin(pool, [PartsQuery(part_columns(parts, "max"), 7)])
    assert res.scans > 1
    expected = reference(G.astype(np.float64), Tg.astype(np.float64), labels, [1, 1], 7, "max")
    assert res.rows.tolist() == expected


def test_many_queries_in_one_scan_equal_each_alone():
    _, _, _, pool, parts = labelled_parts(1)
    qs = [PartsQuery(part_columns(parts, "max"), 5), PartsQuery(part_columns(parts[:1], "mean"),
                                                                 30)]
    together = round_robin(pool, qs)
    for q, r in zip(qs, together, strict=True):
        (alone,) = round_robin(pool, [q])
        assert r.rows.tolist() == alone.rows.tolist()


def test_a_small_pool_runs_out_with_fewer_rows():
    """Every row a copy of one of three: three rows at most, whatever k."""
    rng = np.random.default_rng(2)
    G = np.repeat(rng.standard_normal((3, 16)), 5, axis=0).astype(np.float32)
    pool = StackedPool(TensorSource(G, 1), eta=None)
    (res,) = round_robin(pool, [PartsQuery([G[:1].T.astype(np.float64)], 10)])
    assert sorted(res.rows.tolist()) == [0, 5, 10] and res.copies_set_aside == 12


def test_store_round_robin_in_ram_and_streamed_equals_the_rule(tmp_path):
    """Through a real store: the labels of the target's subtasks are the parts."""
    G, Tg, labels = flooded(3)
    lrs = [2e-5, 1e-5]
    store = gradstore.open(str(tmp_path / "s"))
    for t in range(2):
        store.import_vectors("pool", G[:, t], checkpoint=str(t), lr=lrs[t])
        store.import_vectors("tgt", Tg[:, t], checkpoint=str(t), lr=lrs[t], subtasks=labels,
                             kind="target")
    # the rule on the vectors as stored (float16)
    stored = store.vectors("pool")[1].reshape(G.shape).astype(np.float64)
    tstored = store.vectors("tgt")[1].reshape(Tg.shape).astype(np.float64)
    expected = reference(stored, tstored, labels, lrs, 30, "max")
    ids = store.ids("pool")
    for mode in ("ram", "stream"):
        sel = store.select("pool", "tgt", 30, method="round-robin", mode=mode)
        assert sel.ids == [ids[i] for i in expected]
        assert sel.params["parts"] == ["a", "b", "c"] and sel.params["per_part"] == [10, 10, 10]
        assert (sel.weights == 1).all() and 0 < sel.residual < 1


def test_gtp_by_parts_equals_a_pursuit_per_part(tmp_path):
    """``--target-mode parts``: each part's own gtp (equal shares, larger parts first),
    picks taken in turn: the same rows as arrays.gtp run on each part alone."""
    G, Tg, labels = flooded(4)
    store = gradstore.open(str(tmp_path / "s"))
    flat, tflat = G.reshape(len(G), -1), Tg.reshape(len(Tg), -1)
    store.import_vectors("pool", flat, checkpoint="0")
    store.import_vectors("tgt", tflat, checkpoint="0", subtasks=labels, kind="target")
    sel = store.select("pool", "tgt", 20, method="gtp", target_mode="parts")
    flat, tflat = store.vectors("pool")[1], store.vectors("tgt")[1]  # as stored (float16)
    lab = np.array(labels)
    alone = [arrays.gtp(flat, tflat[lab == s], k)[0].tolist()
             for s, k in (("a", 7), ("b", 7), ("c", 6))]
    expected, seen = [], set()
    for turn in range(7):
        for rows in alone:
            if turn < len(rows) and rows[turn] not in seen:
                seen.add(rows[turn])
                expected.append(rows[turn])
    ids = store.ids("pool")
    assert sel.ids == [ids[i] for i in expected]
    assert sel.params["parts"] == ["a", "b", "c"]
    assert sel.params["parts_overlap"] == 7 + 7 + 6 - len(expected)


def test_cli_round_robin_and_parts(tmp_path):
    """Through the command line: the JSON answer equals the Python one (json records the
    parts and their counts); a round-robin query that cannot fill k says why; choices
    that do not go together are refused in one line with exit 2."""
    from tests.cli.test_cli import run

    G, Tg, labels = flooded(5)
    s = str(tmp_path / "s")
    store = gradstore.open(s)
    store.import_vectors("pool", G.reshape(len(G), -1), checkpoint="0")
    store.import_vectors("tgt", Tg.reshape(len(Tg), -1), checkpoint="0", kind="target")
    py = store.select("pool", "tgt", 12, method="round-robin", part_score="mean", save=False)
    out = json.loads(run("select", s, "--pool", "pool", "--target", "tgt", "--budget", "12",
                         "--method", "round-robin", "--part-score", "mean", "--format", "json",
                         "--quiet").stdout)[0]
    assert out["ids"] == py.ids and out["method"] == "round-robin"
    assert py.params["parts"][0].startswith("cluster-")  # no labels: the target's clusters
    copies = np.repeat(G[[100, 150, 200]].reshape(3, -1), 5, axis=0)  # 15 rows, 3 distinct
    store.import_vectors("few", copies, checkpoint="0")
    short = run("select", s, "--pool", "few", "--target", "tgt", "--budget", "10", "--method",
                "round-robin", "--quiet")
    assert "round-robin chose 3 of the k=10 allowed" in short.stderr + short.stdout
    bad = run("select", s, "--pool", "pool", "--target", "tgt", "--budget", "5", "--method",
              "less", "--target-mode", "parts", ok=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--target-mode parts applies to gtp only" in bad.stderr
    bad = run("select", s, "--pool", "pool", "--target", "tgt", "--budget", "5", "--method",
              "round-robin", "--part-score", "median", ok=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
