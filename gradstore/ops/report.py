"""`gradstore report`: what selections hold, measured the same way for every method.

For each selection (and side by side for several) :func:`build_report` computes:

* **residuals on one footing**: the target's trajectory against the best non-negative fit
  of the chosen rows, in one space for every method (GTP as published: each checkpoint's
  gradient unit-normalised, weighted by the square root of its share of the learning
  rates, not centred; the target read in the pool's gradient type), in total and per
  checkpoint. A selection's own ``residual`` is in its method's space (the default GTP
  centres the pool; LESS and random have none), so only these numbers compare;
* **a residual curve**: the same fit on the first j chosen rows, for j up to k, in the
  order the method chose them (GTP's picks, LESS's ranking, random's draw), and the
  **budget advisor**: the smallest j that reaches 90% of the residual reduction the whole
  selection achieves (:data:`ENOUGH_SHARE`): past it, extra examples stop paying;
* **near-duplicates**: pairs of chosen rows whose cosine (same space) is at least
  ``duplicate_cosine``, and how many picks they cost (chosen rows minus groups of copies);
* **composition** by any field of the source rows (``by``), against the pool's, and
  against the target's rows where the target's data file is given;
* **overlap** between selections (Jaccard and shared ids), the top and bottom rows by
  weight with their text, the weights' distribution, and provenance.

Rendering (Jinja2 template, matplotlib figures) is in :mod:`gradstore.ops.report_page`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradstore.config import SelectConfig
from gradstore.errors import GradstoreError
from gradstore.grads.data import read_records
from gradstore.ops.export import pool_records, row_text
from gradstore.ops.neighbors import Neighbor, neighbors
from gradstore.ops.query import checkpoint_weights
from gradstore.ops.select import SourceCache, stacked_pool, target_matrix
from gradstore.ops.summaries import query_of, table_summary
from gradstore.selectors.gtp import DUPLICATE_COSINE
from gradstore.selectors.omp import fit_rows
from gradstore.store.database import Database
from gradstore.store.selections import Selection

ENOUGH_SHARE = 0.9
"""The budget advisor's mark: the first j reaching this share of the whole selection's
residual reduction (from 1, nothing chosen, to the residual of all k)."""
CURVE_POINTS = 16
SHOW_ROWS = 5
NEIGHBORS = 3
"""Pool rows shown per target row (the closest in LESS's space)."""


@dataclass
class SelectionFacts:
    """What the report shows for one selection."""

    selection: Selection
    residual: float
    residual_per_checkpoint: list[float]
    curve: list[tuple[int, float]]
    enough_at: int | None
    duplicate_pairs: list[tuple[str, str, float]]
    spent_on_copies: int
    composition: dict[str, int] = field(default_factory=dict)
    top: list[dict[str, Any]] = field(default_factory=list)
    bottom: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    """``gradstore evaluate`` results: per baseline, each arm's mean loss and exact match."""

    @property
    def query(self) -> str:
        """The selection's query in a line (``where``, ``exclude``, what each
        ``--exclude-near`` table dropped, the rows it allowed); empty when it had none."""
        q = query_of(self.selection.params)
        parts = [f"where {q['where']}"] if "where" in q else []
        parts += [f"exclude {e}" for e in q.get("exclude", [])]
        parts += [f"near {t}: {d['dropped']} dropped ({d['same_content']} same content"
                  + (f", {d['cosine']} close" if d.get("cosine") is not None else "") + ")"
                  for t, d in q.get("exclude_near", {}).items()]
        if "extend" in q:
            parts.append(f"extends {q['extend']} ({q.get('rows_kept')} rows kept)")
        parts += [f"max share {k}={v:g}" for k, v in q.get("max_share", {}).items()]
        if "rows_allowed" in q:
            parts.append(f"{q['rows_allowed']} rows allowed")
        return "; ".join(parts)

    @property
    def dropped(self) -> dict[str, list[str]]:
        """Per ``--exclude-near`` entry, the ids of the pool rows it dropped (the first
        ``DROPPED_IDS``, as recorded)."""
        near = self.selection.params.get("exclude_near") or {}
        return {entry: list(d.get("ids", [])) for entry, d in near.items() if d.get("dropped")}


@dataclass
class Report:
    store: str
    pool: str
    provenance: dict[str, Any]
    selections: list[SelectionFacts]
    overlap: list[list[float]]
    shared: list[list[int]]
    by: str | None = None
    pool_composition: dict[str, int] = field(default_factory=dict)
    target_composition: dict[str, int] = field(default_factory=dict)
    neighbors: dict[str, list[list[Neighbor]]] = field(default_factory=dict)
    """Per target of the selections, each target row's ``NEIGHBORS`` closest pool rows."""

    def composition_keys(self) -> list[str]:
        """Every value of the ``by`` field seen: the selections' first, then the pool's."""
        seen = [k for f in self.selections for k in f.composition]
        seen += list(self.target_composition) + list(self.pool_composition)
        return list(dict.fromkeys(seen))


def build_report(db: Database, selection_ids: list[str], *, data: str | Path | None = None,
                 by: str | None = None, target_data: str | Path | None = None,
                 duplicate_cosine: float = DUPLICATE_COSINE) -> Report:
    """The report's facts for ``selection_ids`` (``latest`` allowed; none: the selections
    of the most recent pool and target, up to 8). ``data`` defaults to the pool's recorded
    source; without a readable one, composition and texts are left out unless ``by`` asks
    for them (then it is an error)."""
    sels = pick_selections(db, selection_ids)
    pool = sels[0].pool
    if not 0 < duplicate_cosine <= 1:
        raise GradstoreError(f"duplicate cosine {duplicate_cosine} is not in (0, 1]; "
                             "use e.g. 0.99")
    stored_by = by is not None and by in db.data_fields(pool)  # counted from the store
    records = _records(db, pool, [i for s in sels for i in s.ids], data,
                       None if stored_by else by)
    space = ResidualSpace(db, pool)
    facts = [space.facts(s, duplicate_cosine) for s in sels]
    for f in facts:
        f.evaluations = [evaluation_summary(e) for e in db.evaluations(f.selection.selection_id)]
    near = {t: _by_target_row(neighbors(db, pool, t, NEIGHBORS, data=data,
                                        cache=space.cache))
            for t in dict.fromkeys(s.target for s in sels) if t is not None}
    if records is not None:
        for f in facts:
            f.top, f.bottom = _extremes(f.selection, records)
            if by and not stored_by:
                f.composition = _count([records[i].fields for i in f.selection.ids], by)
    if stored_by:
        value_of = _stored_values(db, pool, by)
        for f in facts:
            f.composition = _count([{by: value_of[i]} for i in f.selection.ids], by)
    out = Report(store=db.uri, pool=pool, provenance=provenance(db, pool), selections=facts,
                 overlap=[[_jaccard(a, b) for b in sels] for a in sels],
                 shared=[[len(set(a.ids) & set(b.ids)) for b in sels] for a in sels], by=by,
                 neighbors=near)
    if stored_by:
        out.pool_composition = _count([{by: v} for v in value_of.values()], by)
    elif by and records is not None:
        out.pool_composition = _count([r.fields for r in records.values()
                                       if r.id in space.position], by)
    if by and target_data is not None:
        out.target_composition = _count([r.fields for r in read_records(target_data)], by)
    return out


def pick_selections(db: Database, selection_ids: list[str]) -> list[Selection]:
    """The named selections (all of one pool), or the latest run's (same pool and target)."""
    if selection_ids:
        sels = [db.selection(s) for s in selection_ids]
    else:
        every = sorted(db.selections(), key=lambda s: s.created)
        if not every:
            raise GradstoreError(f"store {db.uri!r} holds no selections; run select first")
        last = every[-1]
        sels = [s for s in every if (s.pool, s.target) == (last.pool, last.target)][-8:]
    pools = sorted({s.pool for s in sels})
    if len(pools) > 1:
        raise GradstoreError(f"the selections come from different pools ({', '.join(pools)}); "
                             "report on one pool at a time")
    return sels


class ResidualSpace:
    """GTP-as-published's stacked space of one pool, where every selection is measured."""

    def __init__(self, db: Database, pool: str) -> None:
        self.db, self.pool = db, pool
        self.meta = db.meta(pool)
        self.opts = SelectConfig(method="gtp-paper", progress=False, save=False)
        self.cache = SourceCache()
        """The pool as read into RAM: the report's other passes (neighbours) reuse it."""
        self.spool = stacked_pool(db, pool, self.opts, checkpoint_weights(self.meta, None),
                                  self.cache)
        self.pool_ids = db.ids(pool)
        self.position = {i: n for n, i in enumerate(self.pool_ids)}
        self.targets: dict[str | None, np.ndarray] = {}

    def target(self, name: str | None) -> np.ndarray:
        if name not in self.targets:
            Y, _ = target_matrix(self.db, self.spool, self.pool, self.meta, name, False,
                                 "gtp-paper")
            self.targets[name] = Y[:, 0]
        return self.targets[name]

    def rows_of(self, sel: Selection) -> np.ndarray:
        missing = [i for i in sel.ids if i not in self.position]
        if missing:
            raise GradstoreError(
                f"selection {sel.selection_id} names {len(missing)} ids no longer in table "
                f"{self.pool!r} (e.g. {missing[0]!r}); it was made on an earlier version")
        return np.asarray([self.position[i] for i in sel.ids], dtype=np.int64)

    def fit(self, A: torch.Tensor, y: np.ndarray) -> tuple[float, list[float]]:
        """Relative residual of the best non-negative fit of rows ``A`` (read once per
        selection), in total and per checkpoint."""
        if A.shape[0] == 0:
            return 1.0, [1.0] * len(self.meta.checkpoints)
        W, total = fit_rows(A, y)
        r = A.double().numpy().T @ W[:, 0] - y
        blocks = np.split(np.arange(len(y)), len(self.meta.checkpoints))
        per = [float(np.linalg.norm(r[b]) / max(np.linalg.norm(y[b]), 1e-30)) for b in blocks]
        return float(total), per

    def facts(self, sel: Selection, duplicate_cosine: float) -> SelectionFacts:
        rows, y = self.rows_of(sel), self.target(sel.target)
        A = self.spool.rows(rows)
        total, per = self.fit(A, y)
        k = len(rows)
        grid = sorted({int(round(j)) for j in np.geomspace(1, max(k, 1), CURVE_POINTS)}
                      | {k}) if k else []
        curve = [(j, total if j == k else self.fit(A[:j], y)[0]) for j in grid]
        pairs, spent = duplicates(sel.ids, A.double().numpy(), duplicate_cosine)
        return SelectionFacts(sel, total, per, curve, enough_at(curve), pairs, spent)


def _by_target_row(found: list[Neighbor]) -> list[list[Neighbor]]:
    rows: dict[str, list[Neighbor]] = {}
    for n in found:
        rows.setdefault(n.target_id, []).append(n)
    return list(rows.values())


def duplicates(ids: list[str], A: np.ndarray,
               cosine: float) -> tuple[list[tuple[str, str, float]], int]:
    """Pairs of chosen rows (``A``, in selection order) at ``cosine`` or more, and picks
    beyond one per group of copies."""
    if len(A) < 2:
        return [], 0
    U = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-30)
    C = U @ U.T
    ii, jj = np.nonzero(np.triu(C >= cosine, 1))
    parent = list(range(len(A)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(ii.tolist(), jj.tolist(), strict=True):
        parent[root(a)] = root(b)
    groups = len({root(a) for a in range(len(A))})
    pairs = [(ids[a], ids[b], float(C[a, b])) for a, b in zip(ii, jj, strict=True)]
    return pairs, len(A) - groups


def enough_at(curve: list[tuple[int, float]]) -> int | None:
    """The smallest j whose residual has made :data:`ENOUGH_SHARE` of the reduction from
    1 (nothing chosen) to the curve's last residual; None when there is no reduction."""
    if not curve:
        return None
    last = curve[-1][1]
    if last >= 1.0:
        return None
    for j, r in curve:
        if 1.0 - r >= ENOUGH_SHARE * (1.0 - last) - 1e-12:
            return j
    return curve[-1][0]


def evaluation_summary(e: dict[str, Any]) -> dict[str, Any]:
    """A stored evaluation as the report shows it: means over seeds, and the difference."""
    def mean(arm: str, metric: str) -> float:
        v = [r[metric] for k, r in e["runs"].items() if k.startswith(arm + "|")]
        return float(np.mean(v)) if v else float("nan")

    seeds = sum(k.startswith("selection|") for k in e["runs"])
    out = {"baseline": e["baseline"], "test": Path(e["test"]).name, "rows": e["test_rows"],
           "seeds": seeds, "created": e.get("created", "")}
    for metric in ("loss", "exact_match"):
        out[metric] = (mean("selection", metric), mean("baseline", metric))
    return out


def provenance(db: Database, pool: str) -> dict[str, Any]:
    """How the pool's vectors were made: model, checkpoints, projection, types, version."""
    info = table_summary(db, pool, full=True)
    info.pop("selections", None)
    return info


def _records(db: Database, pool: str, ids: list[str], data, by: str | None):
    """The pool's source rows by id, or None when there is no data file and none is needed."""
    try:
        records = pool_records(db, pool, list(dict.fromkeys(ids)), data)
    except GradstoreError:
        if data is not None or by:
            raise
        return None
    if by and not any(by in r.fields for r in records.values()):
        fields = sorted({k for r in list(records.values())[:50] for k in r.fields})
        raise GradstoreError(f"the pool's rows have no field {by!r} (fields: "
                             f"{', '.join(fields)}); pass --by with one of them")
    return records


def _stored_values(db: Database, pool: str, name: str) -> dict[str, Any]:
    """Each pool row's value of a kept field, by id (read from the store)."""
    codes, values = db.group_codes(pool, name)
    return dict(zip(db.ids(pool), (values[c] for c in codes), strict=True))


def _count(rows: list[dict[str, Any]], name: str) -> dict[str, int]:
    """How many rows hold each value of field ``name``, most first."""
    counts = Counter(_label(r.get(name)) for r in rows)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _label(value: Any) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _jaccard(a: Selection, b: Selection) -> float:
    sa, sb = set(a.ids), set(b.ids)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _extremes(sel: Selection, records) -> tuple[list[dict], list[dict]]:
    order = np.argsort(-np.asarray(sel.weights), kind="stable")
    rows = [{"id": sel.ids[i], "rank": int(i) + 1, "weight": float(sel.weights[i]),
             "text": row_text(records[sel.ids[i]].fields)} for i in order]
    return rows[:SHOW_ROWS], rows[-SHOW_ROWS:][::-1] if len(rows) > SHOW_ROWS else []
