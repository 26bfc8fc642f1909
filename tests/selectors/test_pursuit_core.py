"""The pursuit core: one scan per round for every live state, each state its own answers."""

import threading

import numpy as np
import pytest
import torch

from gradstore.selectors.gtp import gtp
from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.omp import omp
from gradstore.selectors.pursuit import PursuitState, Wanted, run_pursuit
from gradstore.selectors.query import Query
from gradstore.selectors.scan import MAXIMUM, POSITIVE, ScanQuery
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from tests.conftest import unit_rows


class Probe(PursuitState):
    """Fixed columns and asks; each step records its answers, bars the first ask's rows
    from later scans, and the state is done after ``steps`` steps."""

    def __init__(self, columns, asks, steps):
        super().__init__(Query(columns, 1), m=0, done=steps == 0)
        self.columns, self.asks, self.left = columns, asks, steps
        self.barred: list[int] = []
        self.got: list = []
        self.threads: list[int] = []  # the thread each step ran on

    def wanted(self):
        excl = np.asarray(self.barred, dtype=np.int64)
        return Wanted(self.columns, [ScanQuery(q.columns, q.m, exclude=excl, reduce=q.reduce,
                                               sign=q.sign) for q in self.asks])

    def step(self, found):
        with self.timed("seconds_nnls"):
            self.threads.append(threading.get_ident())
            self.got.append([(rows.tolist(), scores) for rows, scores in found])
            self.barred.extend(found[0][0].tolist())
            self.left -= 1
            self.done = self.left == 0
            self.history.append(float(self.left))

    def answer(self):
        rows = np.asarray(self.barred, dtype=np.int64)
        return rows, np.ones((len(rows), 1)), 0.0


def expected(A, columns, ask, barred):
    """The ask's top rows and scores, from float64 products of the rows in numpy."""
    corr = ask.sign * (A @ columns[:, ask.columns])
    score = np.clip(corr, 0, None).sum(1) if ask.reduce == POSITIVE else corr.max(1)
    score[np.asarray(barred, dtype=np.int64)] = -np.inf
    order = np.argsort(-score, kind="stable")[: ask.m]
    order = order[np.isfinite(score[order]) & ((score[order] > 0) | (ask.reduce != POSITIVE))]
    return order.tolist(), score[order]


def probes(rng, D):
    return [
        Probe(rng.standard_normal((D, 2)), [ScanQuery(slice(0, 2), 4)], steps=3),
        Probe(rng.standard_normal((D, 1)), [ScanQuery(slice(0, 1), 3, reduce=MAXIMUM),
                                            ScanQuery(slice(0, 1), 2, reduce=MAXIMUM, sign=-1.0)],
              steps=1),
        Probe(rng.standard_normal((D, 3)), [ScanQuery(slice(1, 3), 5, reduce=MAXIMUM)], steps=2),
        Probe(rng.standard_normal((D, 1)), [ScanQuery(slice(0, 1), 2)], steps=0),
    ]


def test_each_state_gets_the_answers_to_its_own_asks():
    rng = np.random.default_rng(4)
    pool = StackedPool(TensorSource(unit_rows(rng, 300, 2, 16), 2))
    A = pool.rows(np.arange(300)).double().numpy()
    states = probes(rng, pool.width)
    rounds = []
    results = run_pursuit(pool, states, after=lambda n, live: rounds.append(
        (n, [states.index(s) for s in live])))
    # one scan per round for the states still live; a state done from the start never scanned
    assert rounds == [(1, [0, 1, 2]), (2, [0, 2]), (3, [0])]
    assert [len(s.got) for s in states] == [3, 1, 2, 0]
    for st in states:
        barred: list[int] = []
        for got in st.got:
            assert len(got) == len(st.asks)
            for (rows, scores), ask in zip(got, st.asks, strict=True):
                want_rows, want_scores = expected(A, st.columns, ask, barred)
                assert rows == want_rows
                np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
            barred += got[0][0]
    for st, res in zip(states, results, strict=True):
        assert res.rows.tolist() == st.barred and res.history == st.history
        assert res.scans == 3 and res.seconds_scan > 0
        assert res.seconds_fit == sum(st.timings.values())
    assert results[0].seconds_fit > 0 and results[3].seconds_fit == 0.0


def test_max_scans_ends_the_run_with_states_still_live():
    rng = np.random.default_rng(1)
    pool = StackedPool(TensorSource(unit_rows(rng, 50, 1, 8), 1))
    st = Probe(rng.standard_normal((8, 1)), [ScanQuery(slice(0, 1), 1)], steps=10)
    (res,) = run_pursuit(pool, [st], max_scans=4)
    assert res.scans == 4 and len(st.got) == 4 and not st.done


class Plain:
    """The pool's rows through a source that is not held in RAM as a TensorSource."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("held", [True, False], ids=["tensor", "streamed"])
def test_threads_run_steps_in_parallel_only_over_a_pool_in_ram(held):
    rng = np.random.default_rng(2)
    source = TensorSource(unit_rows(rng, 200, 2, 8), 2)
    pool = StackedPool(source if held else Plain(source))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        answers = {}
        for threads in (False, True):
            states = probes(np.random.default_rng(3), pool.width)
            run_pursuit(pool, states, threads=threads)
            answers[threads] = [[[rows for rows, _ in got] for got in s.got] for s in states]
            main = threading.get_ident()
            first_round = [s.threads[0] for s in states[:3]]  # 3 live states, then 2, then 1
            if threads and held:
                assert main not in first_round
            else:
                assert set(first_round) == {main}
            assert states[0].threads[2] == main  # a round with one live state: no pool
    finally:
        torch.set_num_threads(old)
    assert answers[True] == answers[False]


def test_an_error_in_a_threaded_step_is_raised():
    class Broken(Probe):
        def step(self, found):
            raise RuntimeError("step failed")

    rng = np.random.default_rng(5)
    pool = StackedPool(TensorSource(unit_rows(rng, 40, 1, 8), 1))
    states = [Broken(rng.standard_normal((8, 1)), [ScanQuery(slice(0, 1), 1)], 1)
              for _ in range(2)]
    with pytest.raises(RuntimeError, match="step failed"):
        run_pursuit(pool, states, threads=True)


def test_pursuits_report_their_own_work_and_store_no_timing():
    """Each pursuit reports the seconds of its own work between scans (gtp's grow and swap
    steps, gtp-paper's and OMP's NNLS solves), within the run's time; gtp's ``details``,
    which a selection stores with its parameters, hold no timing."""
    import time

    rng = np.random.default_rng(6)
    pool = StackedPool(TensorSource(unit_rows(rng, 400, 2, 16), 2))
    y = pool.rows(np.arange(10)).double().numpy().mean(0)
    for run, p in ((gtp, pool.centered()), (gtp_paper, pool), (omp, pool)):
        t0 = time.perf_counter()
        (r,) = run(p, [Query(y, 10)])
        total = time.perf_counter() - t0
        assert 0 < r.seconds_fit < total and 0 < r.seconds_scan < total
        assert not [key for key in r.details if "second" in key]
