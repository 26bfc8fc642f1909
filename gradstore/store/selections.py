"""Selections: the answer to one (target, budget) query, persisted in the store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from gradstore.store.integrity import DamagedTable

SELECTIONS_TABLE = "_selections"

SELECTIONS_SCHEMA = pa.schema(
    [
        pa.field("selection_id", pa.string(), nullable=False),
        pa.field("created", pa.string()),
        pa.field("pool", pa.string()),
        pa.field("target", pa.string()),
        pa.field("method", pa.string()),
        pa.field("budget", pa.string()),
        pa.field("k", pa.int64()),
        pa.field("ids", pa.list_(pa.string())),
        pa.field("weights", pa.list_(pa.float64())),
        pa.field("residual", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("history", pa.list_(pa.float64())),
        pa.field("params", pa.string()),
    ]
)


@dataclass
class Selection:
    """Chosen pool examples, in selection order, with non-negative weights."""

    selection_id: str
    method: str
    budget: str
    k: int
    pool: str
    target: str | None
    ids: list[str]
    weights: np.ndarray
    residual: float
    seconds: float
    created: str = ""
    history: list[float] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def to_polars(self):  # -> polars.DataFrame
        import polars as pl

        return pl.DataFrame(
            {
                "rank": np.arange(1, len(self.ids) + 1, dtype=np.int64),
                "id": self.ids,
                "weight": np.asarray(self.weights, dtype=np.float64),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `select --format json` prints (README)."""
        return {
            "selection_id": self.selection_id,
            "target": self.target,
            "budget": self.budget,
            "method": self.method,
            "ids": list(self.ids),
            "weights": [float(w) for w in self.weights],
            "residual": float(self.residual),
            "seconds": float(self.seconds),
        }

    def to_record(self) -> dict[str, Any]:
        return {
            "selection_id": self.selection_id,
            "created": self.created,
            "pool": self.pool,
            "target": self.target,
            "method": self.method,
            "budget": self.budget,
            "k": int(self.k),
            "ids": list(self.ids),
            "weights": [float(w) for w in self.weights],
            "residual": float(self.residual),
            "seconds": float(self.seconds),
            "history": [float(h) for h in self.history],
            "params": json.dumps(dict(self.params, checksum=self.checksum()), sort_keys=True,
                                 default=str),
        }

    def checksum(self) -> str:
        """A hash of what the selection answers (kept in its record's params; a record that
        no longer matches it was damaged on disk)."""
        what = [self.selection_id, self.created, self.pool, self.target, self.method,
                self.budget, int(self.k), list(self.ids), [float(w) for w in self.weights],
                float(self.residual)]
        return hashlib.blake2b(json.dumps(what).encode(), digest_size=16).hexdigest()

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Selection:
        """The selection a log record holds; :class:`DamagedTable` when it fails its checksum
        (records written before checksums are taken as they are)."""
        sel = cls._from_record(rec)
        want = sel.params.pop("checksum", None)
        if want is not None and want != sel.checksum():
            raise DamagedTable(
                f"selection {sel.selection_id!r} in the selection log fails its checksum (the "
                "log's files were changed); run `gradstore restore STORE _selections` to pick "
                "an earlier version, or run the selection again"
            )
        return sel

    @classmethod
    def _from_record(cls, rec: dict[str, Any]) -> Selection:
        try:
            params = json.loads(rec.get("params") or "{}")
        except ValueError:
            raise DamagedTable(
                f"selection {rec.get('selection_id')!r} in the selection log cannot be read; "
                "run `gradstore restore STORE _selections` to pick an earlier version"
            ) from None
        return cls(
            selection_id=rec["selection_id"],
            method=rec["method"],
            budget=rec["budget"],
            k=int(rec["k"]),
            pool=rec["pool"],
            target=rec["target"],
            ids=list(rec["ids"] or []),
            weights=np.asarray(rec["weights"] or [], dtype=np.float64),
            residual=float(rec["residual"]),
            seconds=float(rec["seconds"]),
            created=rec.get("created") or "",
            history=list(rec.get("history") or []),
            params=params,
        )
