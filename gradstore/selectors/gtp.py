"""Gradient Trajectory Pursuit, fitted as the trainer will use the selection (the default).

    minimise  || (1/k) sum_{i in S} a_i - y ||_2   over  |S| = k

A trainer gives every selected example the same weight, so the gradient trajectory
that training on S follows is the *mean* of the selected rows. This pursuit chooses
S so that this mean matches the target's mean trajectory ``y``, instead of fitting
``y`` with free non-negative weights that training then ignores (the paper's
objective, :func:`gradstore.selectors.gtp_paper.gtp_paper`). Measured on the
end-to-end benchmark (docs/selection.md), the free-weight fit spends a large budget
on rows of other skills that fit the last few percent of ``y`` with tiny weights;
with the trainer's weights such a row moves the mean away from ``y`` and is not
chosen, and the selection keeps the target's variety instead of its single most
typical kind of example (which a top-k ranking such as LESS picks).

The pursuit shares GTP's structure: one correlation scan over the pool per round
for every query at once, then work on a small candidate set only.

* **Grow.** With t rows chosen, adding row i gives ``||s + a_i - (t+1) y||^2 =
  ||r||^2 - 2 a_i.r + ||a_i||^2`` with ``r = (t+1) y - s`` and ``s`` the sum of the
  chosen rows, so the best next row maximises ``a_i.r - ||a_i||^2 / 2``. A scan
  returns the m best rows U; rows are then taken from U greedily, each pick
  updating U's scores through its products with U (``r`` gains ``y - a_j``), until U's
  best falls below the scan's m-th score; then the pool is scanned again.
* **Swap.** With k rows chosen, exchanging member j for outsider i changes
  ``||k y - s||^2`` by ``2 a_j.r - 2 a_i.r + ||a_i - a_j||^2``; each round scans
  for the best outsiders and the members whose removal costs least, applies the
  best improving exchanges among them, and stops when a round improves the
  relative residual by less than ``min_gain``.

With several target columns (subtask means) the target is their average: every
subtask counts the same, as LESS's max-over-subtasks rule lets each count.

**Copies.** Equal weights make a copy of a chosen row worth choosing again (two copies
are one example with weight 2, which the mean rewards when that example sits close to the
target). The trainer's weights say every example counts once, so a row whose stored vector
is value for value a chosen row's, or whose stacked row has cosine at least
``DUPLICATE_COSINE`` with a chosen row's (both in the candidate set), is never chosen: it
is set aside for the rest of the pursuit. Measured on 40 groups of 4 identical rows among
2,000 others (``tests/selectors/test_gtp.py``): 2.2-2.7 copies per group before, 1.0 now.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradstore.selectors.greedy import dot64, one_thread, squares64
from gradstore.selectors.pursuit import Found, PursuitState, Wanted, run_pursuit
from gradstore.selectors.query import MAX_CANDIDATES, PursuitResult, Query
from gradstore.selectors.quotas import QuotaCounts
from gradstore.selectors.scan import MAXIMUM, ScanQuery
from gradstore.selectors.stacked import StackedPool

MAX_ALPHA = 64.0
"""Largest stretch of the target tried in the tolerance search (then LESS-like already)."""
ALPHA_STEPS = 8
"""Evaluations of the stretch (doubling, then bisection) in the tolerance search."""
DUPLICATE_COSINE = 0.99
"""Two rows whose stacked (pool-centred) rows have at least this cosine are copies of one
example: the pursuit chooses at most one of them."""
MIN_CANDIDATES = 256
"""Fewest rows a round looks at: for small k, 2k candidates left the greedy choice (and
the swaps) short of what the exact greedy finds, and 256 rows cost little."""


class _Selection:
    """Chosen rows in order, the sum ``s`` of their stacked rows, and the stored norms of
    each (the key that finds a byte-for-byte copy of a chosen row)."""

    def __init__(self, width: int) -> None:
        self.rows: list[int] = []
        self.s = np.zeros(width)
        self.keys: dict[bytes, int] = {}

    def copy(self) -> _Selection:
        out = _Selection(0)
        out.rows, out.s, out.keys = list(self.rows), self.s.copy(), dict(self.keys)
        return out


class _Stretch:
    """How hard the target pulls: the pursuit matches ``alpha * y0``. Within ``tolerance``
    of the target (its mean's sampling error) a larger alpha turns the selection toward the
    examples most aligned with it while its mean stays within tolerance. The largest such
    alpha is found by doubling, then bisection (``ALPHA_STEPS`` evaluations, at most
    ``MAX_ALPHA``), each warm-started from the last selection; the best feasible selection
    is kept."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = float(tolerance)
        self.alpha, self.lo, self.hi = 1.0, 1.0, None
        self.best: tuple[float, _Selection] | None = None
        self.evaluations = 0

    def next(self, error: float, chosen: _Selection) -> float | None:
        """The swaps at this alpha converged with ``error``: the next alpha, or None when
        the search is over (then :attr:`best`, if any, is the answer)."""
        feasible = error < self.tolerance
        if self.tolerance <= 0 or (self.evaluations == 0 and not feasible):
            return None
        self.evaluations += 1
        if feasible:
            self.best, self.lo = (self.alpha, chosen.copy()), self.alpha
        else:
            self.hi = self.alpha
        if self.hi is None:
            nxt = self.alpha * 2 if self.alpha * 2 <= MAX_ALPHA else None
        else:
            nxt = (self.lo + self.hi) / 2 if self.evaluations < ALPHA_STEPS else None
        if nxt is not None:
            self.alpha = nxt
        elif self.best is not None:
            self.alpha = self.best[0]
        return nxt


@dataclass
class _Settings:
    """What every query of one gtp run shares: the pool, its rows' squared norms (the
    scores' penalty is half of them; None when all are equal), and the swap settings."""

    pool: StackedPool
    squares: _RowSquares
    half: np.ndarray | None
    max_iter: int
    min_gain: float
    max_swaps: int


class _GtpState(PursuitState):
    """One query's pursuit: its selection, the stretch of its target, and its progress."""

    def __init__(self, q: Query, run: _Settings) -> None:
        super().__init__(q, max(1, min(max(int(q.m), MIN_CANDIDATES), MAX_CANDIDATES)),
                         done=int(q.k) == 0)
        self.run = run
        self.k = int(q.k)
        self.y0 = np.asarray(q.Y, dtype=np.float64).mean(1)
        self.yn = float(np.linalg.norm(self.y0))
        self.y = self.y0  # what the mean is pulled toward: alpha * y0
        self.stretch = _Stretch(q.tolerance)
        self.sel = _Selection(run.pool.width)
        self.rounds = 0  # swap rounds at the current alpha
        self.copies: set[int] = set()  # rows set aside as copies of chosen ones
        # rows per group of each --max-share field (shared: with the other parts' pursuits)
        self.quota = q.counts if q.counts is not None else QuotaCounts(q.quotas, q.fixed)
        if len(q.fixed):  # --extend: the kept rows start the selection and stay in it
            self.sel.rows = [int(r) for r in q.fixed]
            self.sel.s = run.pool.rows(q.fixed).double().sum(0).numpy()
            self.sel.keys = {run.pool.norm_key(int(r)): int(r) for r in q.fixed}
            self.done = len(q.fixed) >= self.k

    @property
    def rows(self) -> list[int]:
        return self.sel.rows

    @property
    def growing(self) -> bool:
        return len(self.sel.rows) < self.k

    def residual_vector(self) -> np.ndarray:
        """``(t+1) y - s`` while growing (t rows chosen), ``k y - s`` once full."""
        t = len(self.sel.rows)
        return (t + 1 if self.growing else t) * self.y - self.sel.s

    def error(self) -> float:
        """``||mean(a_S) - y||`` against the target itself (not the stretched one)."""
        if not self.sel.rows:
            return self.yn
        return float(np.linalg.norm(self.sel.s / len(self.sel.rows) - self.y0))

    def relative_residual(self) -> float:
        return self.error() / self.yn if self.yn > 0 else 0.0

    def gap(self) -> float:
        """``||k y - s||`` for the current (stretched) target: what the swaps lower."""
        return float(np.linalg.norm(self.residual_vector()))

    def settle(self) -> None:
        """The swaps at this alpha have converged: stop, or move to the next alpha."""
        nxt = self.stretch.next(self.error(), self.sel)
        if nxt is None:
            if self.stretch.best is not None:
                self.sel = self.stretch.best[1]
            self.done = True
            return
        self.y, self.rounds = nxt * self.y0, 0

    def wanted(self) -> Wanted:
        """The best outsiders to add (always) and, at k rows, the members whose removal
        costs least (score ``-a.r - |a|^2/2``, outsiders excluded)."""
        chosen = np.asarray(self.rows, dtype=np.int64)
        barred = np.concatenate([chosen, np.fromiter(self.copies, np.int64, len(self.copies))])
        if self.quota and self.growing:  # rows of a full group cannot be added
            barred = np.concatenate([barred, self.quota.blocked()])
        one, half = slice(0, 1), self.run.half
        asks = [ScanQuery(one, self.m, exclude=barred, reduce=MAXIMUM, penalty=half)]
        if not self.growing:  # (the core bars the fixed rows from both asks)
            outside = np.setdiff1d(np.arange(self.run.pool.num_rows), chosen)
            asks.append(ScanQuery(one, min(self.m, self.k - len(self.query.fixed)),
                                  exclude=outside, reduce=MAXIMUM, penalty=half, sign=-1.0))
        return Wanted(self.residual_vector()[:, None], asks)

    def step(self, found: Found) -> None:
        """Grow toward k, or one swap round (and, once the swaps converge, the next stretch
        of the target or the end)."""
        run, outsiders = self.run, found[0][0]
        with self.timed("seconds_steps"):
            if self.growing:
                _grow(run.pool, self, outsiders, run.squares)
            else:
                before = self.gap()
                swapped = _swap(run.pool, self, outsiders, found[1][0], run.squares,
                                run.max_swaps)
                self.rounds += 1
                if not swapped or self.gap() > before * (1 - run.min_gain) \
                        or self.rounds >= run.max_iter:
                    self.settle()
        self.history.append(self.relative_residual())

    def answer(self) -> tuple[np.ndarray, np.ndarray, float]:
        rows = np.asarray(self.rows, dtype=np.int64)
        return rows, np.ones((len(rows), 1)), self.relative_residual()

    def details(self) -> dict:
        return {"alpha": self.stretch.alpha, "tolerance": self.stretch.tolerance,
                "copies_set_aside": len(self.copies)}


def gtp(
    pool: StackedPool,
    queries: Sequence[Query],
    *,
    max_iter: int = 30,
    min_gain: float = 1e-3,
    max_swaps: int = 256,
    progress: Callable[[str], None] | None = None,
    scan_progress: Callable[[int], None] | None = None,
) -> list[PursuitResult]:
    """Choose k rows per query whose mean stacked row matches the query's target.

    Parameters
    ----------
    pool : StackedPool
        The N candidate rows a_i (width D), usually centred (``pool.centered()``).
    queries : sequence of Query
        Targets Y (D, C) (their column mean is matched), budgets k, candidates m
        per scan (default 2k, at least ``MIN_CANDIDATES``, at most ``MAX_CANDIDATES``),
        and a tolerance: once the selection's mean is within it of the target's, the
        pursuit prefers the examples most aligned with the target (see ``settle``).
    max_iter : int
        Most swap rounds (scans) per stretch of the target once a query has k rows;
        growing to k always completes, in as many scans as it needs.
    min_gain : float
        Stop swapping when a round improves the fit by less than this fraction.
    max_swaps : int
        Most exchanges applied per swap round.

    Returns
    -------
    list of PursuitResult
        Rows in selection order, weights all 1 (the trainer's), the relative
        residual ``||mean(a_S) - y|| / ||y||`` and its history per round. Fewer than k
        rows only when the pool holds fewer distinct examples (``details``:
        ``copies_set_aside``).
    """
    sq_norms = _squared_norms(pool)
    run = _Settings(pool, _RowSquares(sq_norms, pool.num_rows),
                    None if sq_norms is None else sq_norms / 2, max_iter, min_gain, max_swaps)
    states = [_GtpState(q, run) for q in queries]
    for st in states:
        if st.k > pool.num_rows:
            raise ValueError(f"budget {st.k} exceeds the pool's {pool.num_rows} rows")

    def report(scans: int, live: list[_GtpState]) -> None:
        if progress is not None:
            worst = max(st.relative_residual() for st in live)
            progress(f"scan {scans}: {len(live)} active, worst residual {worst:.4f}")

    return run_pursuit(pool, states, threads=True, after=report, scan_progress=scan_progress)


def _squared_norms(pool: StackedPool) -> np.ndarray | None:
    """``||a_i||^2`` per row, or None when every row has the same norm (normalised rows:
    the sum of the squared checkpoint scales) and the scores need no per-row term."""
    sq = (pool.multipliers.astype(np.float64) ** 2 * pool.norms.astype(np.float64) ** 2).sum(1)
    if pool.normalize and np.allclose(sq[sq > 0], 1.0, rtol=1e-4):
        return None
    return sq


EXACT_EVERY = 32
"""A swap round updates the residual's correlations from the float32 products it computes
for X anyway (a float64 product with every row cost most of a round), and recomputes them
in float64 every this many exchanges, so rounding never accumulates over more."""
EXCHANGE_BLOCK = 256
"""Rows of the member x outsider block a swap step reads at a time (bounds its float64
temporaries to EXCHANGE_BLOCK x outsiders)."""


class _RowSquares:
    """Rows' squared norms: as the scores use them (the pool's ``sq_norms``, when it has
    them) and as the rows actually are (for the copies' cosine test), the latter computed
    once per row and kept (one float64 per pool row): a round's candidates are mostly the
    last round's, so recomputing them each round would repeat most of the work."""

    def __init__(self, sq_norms: np.ndarray | None, num_rows: int) -> None:
        self.sq_norms = sq_norms
        self.actual = np.full(num_rows, np.nan)

    def norms_and_lengths(self, rows: np.ndarray, A: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray]:
        """For ``rows`` (their stacked rows ``A``): scored squared norms, actual lengths."""
        got = self.actual[rows]
        missing = np.flatnonzero(np.isnan(got))
        if len(missing):
            got[missing] = squares64(A.index_select(0, torch.from_numpy(missing)))
            self.actual[rows[missing]] = got[missing]
        n = got if self.sq_norms is None else self.sq_norms[rows]
        return n, _lengths(got)


def round_bytes(m: int, k: int, width: int) -> int:
    """Bytes one round of the pursuit holds for ``m`` candidates at budget ``k``: the
    swap's rows (members and outsiders, float32), their member x outsider products and the
    float64 blocks read from them (the grow step holds less: m rows and one row of
    products at a time)."""
    members = min(m, k)
    return 4 * (m + members) * width + 4 * m * members + 8 * 3 * EXCHANGE_BLOCK * m


def candidates_within(budget: int, k: int, width: int) -> int:
    """The most candidates per round (at most the default ``2k``, within
    [MIN_CANDIDATES, MAX_CANDIDATES]) whose round holds at most ``budget`` bytes."""
    m = max(MIN_CANDIDATES, min(2 * k, MAX_CANDIDATES))
    while m > MIN_CANDIDATES and round_bytes(m, k, width) > budget:
        m = max(MIN_CANDIDATES, int(m * 0.9))
    return m


def _lengths(squares: np.ndarray) -> np.ndarray:
    """Row lengths from their squared norms (inf for a zero row: its cosines are 0)."""
    d = np.sqrt(np.clip(np.asarray(squares, dtype=np.float64), 0, None))
    return np.where(d > 0, d, np.inf)


def _set_aside(st: _GtpState, rows: np.ndarray) -> None:
    st.copies.update(int(r) for r in rows)


def _grow(pool: StackedPool, st: _GtpState, cand: np.ndarray, squares: _RowSquares) -> None:
    """Add rows of the candidate set greedily until it holds none better than the scan's
    cut-off (the next scan may find better ones) or the query has k rows; copies of a
    chosen row are set aside, never chosen.

    A pick needs only its own row's products with the candidates (``A a_j``), so those are
    computed per pick: a round takes a few dozen of its m candidates (23 of 1,000 on
    average at k = 500 on a 50K-row pool), and the m x m Gram matrix it used to compute
    cost most of the pursuit's own time."""
    if len(cand) == 0:
        st.done = True
        return
    with one_thread(), torch.inference_mode():
        A = pool.rows(cand)
        n, lengths = squares.norms_and_lengths(cand, A)
        c = dot64(A, st.residual_vector())
        yU = dot64(A, st.y)
        score = c - n / 2
        # the scan's cut-off: rows outside U scored at most this (when U is not the rest)
        floor = score.min() if len(cand) >= st.m and len(cand) < pool.num_rows - len(st.rows) \
            else -np.inf
        used = pool.stored_copies(cand, st.sel.keys)  # copies of rows chosen in earlier rounds
        _set_aside(st, cand[used])
        while st.growing:
            full = ~st.quota.allowed(cand) if st.quota else np.zeros_like(used)
            masked = np.where(used | full, -np.inf, score)
            j = int(np.argmax(masked))
            if (used | full).all() or ((used | full).any() and masked[j] < floor):
                break
            used[j] = True
            st.quota.add(int(cand[j]))
            st.sel.rows.append(int(cand[j]))
            st.sel.keys[pool.norm_key(int(cand[j]))] = int(cand[j])
            st.sel.s += A[j].double().numpy()
            gj = (A @ A[j]).numpy()  # float32, as the products always were
            score += yU - gj
            twins = ~used & (gj >= DUPLICATE_COSINE * lengths * lengths[j])
            used |= twins
            _set_aside(st, cand[twins])


def _best_exchange(X: np.ndarray, gain_out: np.ndarray, gain_in: np.ndarray,
                   len_mem: np.ndarray, len_out: np.ndarray, valid: np.ndarray | None = None
                   ) -> tuple[int, int, float]:
    """The (member slot, outsider slot) pair with the smallest change of ``||k y - s||^2``,
    ``gain_out[a] + gain_in[b] - 2 X[a, b]``, over outsiders that copy no member (cosine
    below DUPLICATE_COSINE) and pairs the quotas allow (``valid``), and that change; read a
    block of member rows at a time."""
    barred = np.zeros(X.shape[1], dtype=bool)
    for s in range(0, len(X), EXCHANGE_BLOCK):
        rows = slice(s, s + EXCHANGE_BLOCK)
        barred |= (X[rows] >= DUPLICATE_COSINE * len_mem[rows, None] * len_out[None, :]).any(0)
    gain_in = np.where(barred, np.inf, gain_in)
    best, at = np.inf, (0, 0)
    for s in range(0, len(X), EXCHANGE_BLOCK):
        rows = slice(s, s + EXCHANGE_BLOCK)
        d = gain_out[rows, None] + gain_in[None, :] - 2 * X[rows]
        if valid is not None:
            d = np.where(valid[rows], d, np.inf)
        i = int(np.argmin(d))
        if d.flat[i] < best:  # strict: the first of equal changes, as one argmin over all
            best, at = float(d.flat[i]), (s + i // d.shape[1], i % d.shape[1])
    return at[0], at[1], best


def _swap(
    pool: StackedPool, st: _GtpState, outsiders: np.ndarray, members: np.ndarray,
    squares: _RowSquares, max_swaps: int,
) -> bool:
    """Apply the best improving exchanges between the cheapest members and the best
    outsiders (never one that copies a member); returns whether any was made.

    Only the member x outsider products ``X`` are held (not the Gram matrix of both): an
    exchange refreshes the row and column of the two slots it changes, and the residual's
    correlations ``c`` with one product of the rows."""
    if len(outsiders) == 0 or len(members) == 0:
        return False
    copy = pool.stored_copies(outsiders, st.sel.keys)
    _set_aside(st, outsiders[copy])
    outsiders = outsiders[~copy]
    if len(outsiders) == 0:
        return False
    both = np.concatenate([members, outsiders])
    mem = np.arange(len(members))  # slots: positions in ``both``
    out = np.arange(len(members), len(both))
    made = 0
    position = {r: i for i, r in enumerate(st.rows)}
    with one_thread(), torch.inference_mode():
        A = pool.rows(both)
        X = (A[: len(members)] @ A[len(members) :].T).numpy()
        n, lengths = squares.norms_and_lengths(both, A)
        c = dot64(A, st.residual_vector())
        while made < max_swaps:
            # change of ||k y - s||^2 when member j leaves and outsider i enters
            a, b, best = _best_exchange(X, 2 * c[mem] + n[mem], n[out] - 2 * c[out],
                                        lengths[mem], lengths[out],
                                        st.quota.exchanges(both[mem], both[out]))
            if not best < -1e-12 * max(1.0, st.k * st.yn) ** 2:
                break
            j, i = mem[a], out[b]
            st.quota.remove(int(both[j]))
            st.quota.add(int(both[i]))
            p = position.pop(int(both[j]))
            st.sel.rows[p] = int(both[i])
            position[int(both[i])] = p
            st.sel.keys.pop(pool.norm_key(int(both[j])), None)
            st.sel.keys[pool.norm_key(int(both[i]))] = int(both[i])
            st.sel.s += (A[i].double() - A[j].double()).numpy()
            gi, gj = (A @ A[i]).numpy(), (A @ A[j]).numpy()
            made += 1
            if made % EXACT_EVERY:  # r loses a_i and gains a_j
                c -= gi.astype(np.float64) - gj
            else:
                c = dot64(A, st.residual_vector())
            mem[a], out[b] = i, j
            X[a, :] = gi[out]
            X[:, b] = gj[mem]
    return made > 0
