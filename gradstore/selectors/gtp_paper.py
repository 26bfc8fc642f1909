"""Gradient Trajectory Pursuit (GTP): joint k-sparse non-negative matching.

    minimise ||A w - y||^2  subject to  w >= 0, ||w||_0 <= k

Each iteration does one correlation scan over the pool for all queries at once
(``A^T [r_1 ... r_Q]``), merges the current support S with the m best new
candidates into U, and chooses the new support by a greedy pass with NNLS
refits restricted to U (which needs only the Gram matrix of U, not another
scan). See docs/selection.md for why the greedy support update replaces CoSaMP's
prune-by-weight rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradstore.selectors.gram_cache import GramCache
from gradstore.selectors.greedy import IncrementalNNLS, greedy_nnls_gram, swap_refine
from gradstore.selectors.pursuit import Found, PursuitState, Wanted, run_pursuit
from gradstore.selectors.query import MAX_CANDIDATES, PursuitResult, Query, relative_residual
from gradstore.selectors.quotas import QuotaCounts
from gradstore.selectors.scan import ScanQuery
from gradstore.selectors.stacked import StackedPool


@dataclass
class _Settings:
    """The step settings every query of one run shares (see :func:`gtp_paper`)."""

    min_gain: float
    grow_floor: float
    swap_fraction: float | None
    max_swaps: int


class _PaperState(PursuitState):
    """One query's pursuit: its support, weights and residual, the incremental solver of
    a single-column fit, and the last merged set's Gram matrix (:class:`GramCache`)."""

    def __init__(self, q: Query, pool: StackedPool, settings: _Settings) -> None:
        if len(q.fixed):
            raise ValueError("fixed rows (--extend) are gtp's; give gtp-paper the kept rows' "
                             "residual as its target")
        super().__init__(q, max(1, min(int(q.m), MAX_CANDIDATES)), done=q.yy == 0)
        self.pool = pool
        self.settings = settings
        self.rows = np.zeros(0, dtype=np.int64)
        self.W = np.zeros((0, q.Y.shape[1]))
        self.AS = torch.zeros((0, pool.width))
        # the last merged set U, its rows and Gram matrix: most of the next U is in it
        self.cache = GramCache(pool.width)
        self.R = q.Y.copy()
        self.residual = 1.0 if q.yy > 0 else 0.0
        self.history.append(self.residual)
        self.solver: IncrementalNNLS | None = None
        self.growing = True  # support still below k: grow it from each scan's candidates

    def wanted(self) -> Wanted:
        """The best new candidates for the residual's columns (none of a group the support
        has filled, ``--max-share``)."""
        exclude = self.rows
        if self.query.quotas:
            exclude = np.union1d(exclude, QuotaCounts(self.query.quotas, self.rows).blocked())
        return Wanted(self.R, [ScanQuery(slice(0, self.R.shape[1]), self.m, exclude=exclude)])

    def step(self, found: Found) -> None:
        ((cand, score),) = found
        floor = float(score[-1]) if len(cand) >= self.m else 0.0
        if self.query.quotas:  # U holds at most each group's room: no step can overfill one
            cand = np.asarray(QuotaCounts(self.query.quotas, self.rows).take(cand, len(cand)),
                              dtype=np.int64)
        s = self.settings
        swaps = 0 if s.swap_fraction is None else \
            min(s.max_swaps, int(np.ceil(s.swap_fraction * self.query.k)))
        _advance(self.pool, self, cand, s.grow_floor * floor, s.min_gain, swaps)

    def answer(self) -> tuple[np.ndarray, np.ndarray, float]:
        return self.rows, self.W, self.residual


def _merge(
    pool: StackedPool, st: _PaperState, cand: np.ndarray
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """U = S + candidates (S first, in support order; then the candidates of the last U,
    then the new ones), its rows and Gram matrix (only the rows new to U are read and
    multiplied: :class:`GramCache`)."""
    known = np.isin(cand, st.cache.rows)
    U = np.concatenate([st.rows, cand[known], cand[~known]])
    AU, G = st.cache.gram(pool, U)
    return U, G.numpy(), AU


def gtp_paper(
    pool: StackedPool,
    queries: Sequence[Query],
    *,
    max_iter: int = 30,
    min_gain: float = 1e-3,
    grow_floor: float = 0.5,
    swap_fraction: float | None = 0.25,
    max_swaps: int = 256,
    progress: Callable[[str], None] | None = None,
    scan_progress: Callable[[int], None] | None = None,
) -> list[PursuitResult]:
    """Run one pursuit per query, all advancing in lockstep over shared scans.

    Parameters
    ----------
    pool : StackedPool
        The N candidate rows a_i (width D).
    queries : sequence of Query
        Targets Y (D, C) with budgets k and candidate counts m per scan (default 2k, at
        most ``MAX_CANDIDATES``).
    max_iter : int
        Most correlation scans per query.
    min_gain : float
        Stop a query when an iteration improves its relative residual by less
        than this fraction.
    grow_floor : float
        While the support grows, stop taking candidates from the merged set once
        the best one scores below ``grow_floor`` times the weakest candidate of the
        scan (scaled by the residual's shrinkage); 0 fills to k at once.
    swap_fraction : float or None
        Once the support has k examples, each step exchanges up to this share of
        it for better candidates (forward-backward, O(swaps * k^2)); None
        re-chooses the whole support from U by a greedy pass from scratch.
    max_swaps : int
        At most this many exchanges per step (their cost grows as swaps * k^2).
    """
    settings = _Settings(min_gain, grow_floor, swap_fraction, max_swaps)
    states = [_PaperState(q, pool, settings) for q in queries]

    def report(scans: int, live: list[_PaperState]) -> None:
        if progress is not None:
            worst = max(st.residual for st in live)
            progress(f"iteration {scans}: {len(live)} active, worst residual {worst:.4f}")

    return run_pursuit(pool, states, max_scans=max_iter, after=report,
                       scan_progress=scan_progress)


def _advance(
    pool: StackedPool, st: _PaperState, cand: np.ndarray, floor: float, min_gain: float, swaps: int
) -> None:
    """One GTP step for one query, given the scan's new candidates.

    While the support is below k it is grown from the merged set, keeping what is
    chosen (a warm start) and stopping once the candidates left look worse than
    what the next scan would find. Once it has k examples (or the candidates run
    out), each step exchanges up to ``swaps`` members of S for better ones in
    U = S + new candidates (or, with swaps=0, re-chooses the whole support from U by
    a greedy pass with NNLS refits, docs/selection.md), kept only if the residual drops.
    """
    if len(cand) == 0 and not (st.growing and len(st.rows)):
        st.done = True
        return
    q = st.query
    U, G, AU = _merge(pool, st, cand)
    Y32 = torch.from_numpy(q.Y.astype(np.float32))
    B = (AU @ Y32).double().numpy()
    s = len(st.rows)
    single = q.Y.shape[1] == 1
    with st.timed("seconds_nnls"):
        if st.growing:
            if single and st.solver is None:
                st.solver = IncrementalNNLS(min(q.k, 256) + 1)
            assert not single or st.solver.p == s
            res = greedy_nnls_gram(
                G,
                B,
                q.yy,
                q.k,
                init=s,
                solver=st.solver.clone() if single else None,
                init_weights=None if single else st.W,
                floor=floor,
            )
            grew = len(res.support) > s or not np.array_equal(res.support, np.arange(s))
            if len(res.support) >= q.k or not grew or len(cand) == 0:
                st.growing = False
        elif single and st.solver is not None and swaps:
            res = swap_refine(G, B, q.yy, q.k, st.solver, swaps)
        else:
            res = greedy_nnls_gram(G, B, q.yy, q.k)
    # the step is judged by its residual computed from the rows: the Gram form
    # (||y||^2 - 2 b.w + w.G w from float32 products) is noise below ~1e-3 of ||y||, where
    # it let near-exact fits "improve" for every remaining step
    AS = AU.index_select(0, torch.from_numpy(res.support))
    new_res = relative_residual(AS.numpy(), res.weights, q.Y)
    improved = new_res < st.residual * (1 - min_gain)
    if new_res < st.residual:
        st.rows, st.W, st.AS, st.residual = U[res.support], res.weights, AS, new_res
        st.R = q.Y - st.AS.double().numpy().T @ st.W
        if res.solver is not None:
            st.solver = res.solver
    st.history.append(st.residual)
    # growing or not: a step that improves the fit by less than ``min_gain`` ends the query (a
    # support that has stopped improving before k rows fits the target as well as the
    # rows can, e.g. k above the dimension: growing on cost a scan per step for nothing)
    if not improved:
        st.done = True
