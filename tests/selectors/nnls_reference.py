"""NNLS solvers that the package does not use, kept as references for the tests: an
accelerated projected gradient (FISTA with restart and backtracking), an automatic front
end (active set up to ``AUTO_ACTIVE_SET_MAX_N`` columns, projected gradient beyond) and
``nnls(A, y)``. They are checked against scipy in ``test_nnls.py`` beside ``nnls_gram``."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls as scipy_nnls

from gradstore.selectors.nnls import (  # noqa: PLC2701 - the reference reuses the internals
    _check_gram,
    _LawsonHanson,
    _scaling,
    _warm,
    nnls_gram,
)

_AUTO_PROBE_ITERS = 512
_AUTO_PG_TOL = 1e-3
_AUTO_PG_MAX_ITER = 300
_AUTO_PG_STALL = 32
SCIPY_MAX_COLS = 400
AUTO_ACTIVE_SET_MAX_N = 3000


def nnls_residual(G: np.ndarray, b: np.ndarray, yy: float, x: np.ndarray) -> float:
    """Squared residual ``||A x - y||^2`` from Gram quantities.

    Parameters
    ----------
    G : ndarray, shape (n, n)
        ``A.T @ A``.
    b : ndarray, shape (n,)
        ``A.T @ y``.
    yy : float
        ``y @ y``.
    x : ndarray, shape (n,)
        Weights.

    Returns
    -------
    float
        ``x^T G x - 2 b^T x + yy``, clipped at 0.
    """
    x = np.asarray(x, dtype=np.float64)
    val = float(x @ (np.asarray(G, dtype=np.float64) @ x)) - 2.0 * float(np.dot(b, x)) + float(yy)
    return max(val, 0.0)




# --------------------------------------------------------------------------- #
# accelerated projected gradient
# --------------------------------------------------------------------------- #
def _pg_scaled(G, inv_s, bs, bscale, xs, tol, max_iter, stall_window=None):
    """FISTA with backtracking and function-value restart on the scaled problem.

    ``L`` starts from a Rayleigh quotient after a few power iterations (a lower
    bound on the largest eigenvalue) and is increased whenever a step violates the
    majorisation condition ``d^T G d <= L d^T d`` (``G d`` is known for free from
    the two gradients).  Returns ``(x, kkt, converged)`` with ``x`` the last
    accepted (scaled) iterate and ``kkt`` its KKT residual relative to ``bscale``.
    With ``stall_window`` set, gives up (``converged=False``) as soon as the
    residual fails to drop by a factor 1.5 over that many iterations.
    """

    def mv(v):
        return inv_s * (G @ (inv_s * v))

    def kkt_of(xv, grad):
        pos = xv > 0.0
        r = max(
            float(np.max(np.abs(grad[pos]), initial=0.0)),
            float(np.max(-grad[~pos & usable], initial=0.0)),
        )
        return r / bscale

    usable = inv_s > 0
    x = np.where(usable, np.maximum(xs, 0.0), 0.0)
    gx = mv(x) if x.any() else np.zeros_like(x)
    kkt = kkt_of(x, gx - bs)
    if kkt <= tol:
        return x, kkt, True
    v = usable.astype(np.float64)
    lip = 0.0
    for _ in range(4):
        nv = math.sqrt(float(v @ v))
        if nv == 0.0:
            break
        v /= nv
        gv = mv(v)
        lip = max(lip, float(v @ gv))
        v = gv
    lip = max(lip, 1e-300)
    fx = 0.5 * float(x @ gx) - float(bs @ x)
    y, gy, t = x, gx, 1.0
    window_start = kkt
    for it in range(1, max_iter + 1):
        while True:
            xn = np.maximum(y - (gy - bs) / lip, 0.0)
            xn[~usable] = 0.0
            gxn = mv(xn)
            d = xn - y
            dd = float(d @ d)
            dgd = float(d @ (gxn - gy))
            if dgd <= lip * dd * (1.0 + 1e-12) or dd == 0.0:
                break
            lip = max(2.0 * lip, 1.1 * dgd / dd)
        fxn = 0.5 * float(xn @ gxn) - float(bs @ xn)
        if fxn > fx + 1e-15 * abs(fx) and t > 1.0:
            # Momentum overshot: restart from the last accepted point.
            y, gy, t = x, gx, 1.0
        else:
            tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            beta = (t - 1.0) / tn
            y = xn + beta * (xn - x)
            gy = gxn + beta * (gxn - gx)
            x, gx, fx, t = xn, gxn, fxn, tn
            kkt = kkt_of(x, gx - bs)
            if kkt <= tol:
                return x, kkt, True
        if stall_window and it % stall_window == 0:
            if kkt > window_start / 1.5:
                return x, kkt, False
            window_start = kkt
    return x, kkt, False


def nnls_pg(
    G: np.ndarray,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
) -> np.ndarray:
    """Accelerated projected gradient NNLS in Gram form.

    FISTA with adaptive (function-value) restart and step ``1 / L`` on the
    Jacobi-scaled problem; ``L`` (largest eigenvalue of ``D^{-1/2} G D^{-1/2}``) is
    estimated by power iterations and increased by backtracking when a step
    shows it too small.

    Parameters
    ----------
    G : ndarray, shape (n, n)
        Symmetric positive semi-definite ``A.T @ A``.
    b : ndarray, shape (n,)
        ``A.T @ y``.
    x0 : ndarray, shape (n,), optional
        Starting point (negative entries are set to 0).
    tol : float
        Stop when the KKT residual (infinity norm of the projected gradient of the
        scaled problem) is at most ``tol`` times ``max_j |b_j| / sqrt(G_jj)``.
    max_iter : int
        Maximum number of iterations (one product with ``G`` each).

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 approximate solution.
    """
    G, b = _check_gram(G, b)
    n = b.shape[0]
    x0 = _warm(x0, n)
    if n == 0:
        return np.zeros(0)
    s, valid, bs, bscale = _scaling(G, b)
    if bscale == 0.0:
        return np.zeros(n)
    inv_s = np.where(valid, 1.0 / s, 0.0)
    xs = np.zeros(n) if x0 is None else x0 * s
    x = _pg_scaled(G, inv_s, bs, bscale, xs, tol, max_iter)[0]
    return np.maximum(x * inv_s, 0.0)


# --------------------------------------------------------------------------- #
# dispatch and front end
# --------------------------------------------------------------------------- #
def _large_auto(G, b, x0, tol):
    """``nnls_auto`` for large n: active-set probe, projected gradient, polish.

    1. Up to ``_AUTO_PROBE_ITERS`` Lawson-Hanson additions.  Sparse solutions end
       here, exactly, for a fraction of the cost of a projected-gradient run.
    2. Otherwise FISTA, warm-started from the probe, until the relative KKT
       residual is below ``_AUTO_PG_TOL``; from its support the active-set method
       then finishes exactly (usually a handful of additions and removals).
    3. If FISTA stalls (ill-conditioned ``G``: the residual fails to drop by 1.5x
       over ``_AUTO_PG_STALL`` iterations), or its support is linearly dependent
       (rank-deficient ``G``), its iterate is a poor warm start -- the active set
       would remove many columns one by one -- so the probe's Lawson-Hanson run is
       simply continued to the end instead.
    """
    n = b.shape[0]
    s, valid, bs, bscale = _scaling(G, b)
    if bscale == 0.0:
        return np.zeros(n)
    tol_abs = tol * bscale
    lh = _LawsonHanson(G, b, s, valid, tol_abs, _AUTO_PROBE_ITERS)
    lh.start(x0)
    if lh.run():
        return lh.result()
    inv_s = np.where(valid, 1.0 / s, 0.0)
    xs = lh.result() * s
    xs, _, ok = _pg_scaled(
        G, inv_s, bs, bscale, xs, _AUTO_PG_TOL, _AUTO_PG_MAX_ITER, _AUTO_PG_STALL
    )
    if ok:
        polish = _LawsonHanson(G, b, s, valid, tol_abs, 3 * n + 10)
        # On a rank-deficient G projected gradient tends to a dense minimiser whose
        # support is linearly dependent; that is no useful warm start either.
        if polish.start(xs * inv_s, strict=True):
            polish.run()
            return polish.result()
    lh.max_iter = lh.iterations + 3 * n + 10
    lh.run()
    return lh.result()


def nnls_auto(
    G: np.ndarray,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    tol: float = 1e-10,
) -> np.ndarray:
    """NNLS in Gram form with an automatic choice of method.

    Parameters
    ----------
    G : ndarray, shape (n, n)
        Symmetric positive semi-definite ``A.T @ A``.
    b : ndarray, shape (n,)
        ``A.T @ y``.
    x0 : ndarray, shape (n,), optional
        Warm start.
    tol : float
        Relative dual tolerance (as in :func:`nnls_gram`).

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 solution.

    Notes
    -----
    ``n <= AUTO_ACTIVE_SET_MAX_N``: :func:`nnls_gram`.  Larger n: a short
    active-set probe (ends exactly if the solution is sparse), then accelerated
    projected gradient to locate the support, then an active-set polish from it;
    if projected gradient stalls the active-set method runs to the end instead.
    Either way the result satisfies the same tolerance as :func:`nnls_gram`.
    """
    G, b = _check_gram(G, b)
    n = b.shape[0]
    x0 = _warm(x0, n)
    if n <= AUTO_ACTIVE_SET_MAX_N:
        return nnls_gram(G, b, x0=x0, tol=tol)
    return _large_auto(G, b, x0, tol)


def nnls(A: np.ndarray, y: np.ndarray, *, tol: float = 1e-10) -> np.ndarray:
    """Solve ``min ||A x - y||_2`` subject to ``x >= 0``.

    Parameters
    ----------
    A : ndarray, shape (D, n)
        Design matrix.
    y : ndarray, shape (D,)
        Target.
    tol : float
        Relative dual tolerance for the Gram-form path (see :func:`nnls_gram`).

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 solution.

    Notes
    -----
    Up to ``SCIPY_MAX_COLS`` columns this calls ``scipy.optimize.nnls`` on ``A``;
    otherwise it forms ``G = A.T @ A``, ``b = A.T @ y`` and calls :func:`nnls_auto`.
    """
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 2 or y.ndim != 1 or A.shape[0] != y.shape[0]:
        raise ValueError(f"need A (D, n) and y (D,), got {A.shape} and {y.shape}")
    n = A.shape[1]
    if n == 0:
        return np.zeros(0)
    if n <= SCIPY_MAX_COLS and A.shape[0] > 0:
        try:
            x, _ = scipy_nnls(A, y, maxiter=50 * n + 100)
            if np.isfinite(x).all():
                return np.maximum(x, 0.0)
        except RuntimeError:
            pass
    return nnls_auto(A.T @ A, A.T @ y, tol=tol)
