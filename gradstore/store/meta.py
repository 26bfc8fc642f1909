"""Table provenance that travels with the data (Lance schema and field metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from gradstore.errors import GradstoreError

META_KEY = "gradstore"
INGEST_KEY = "gradstore.ingest"  # how an ingested table was made, and whether it is finished
FORMAT_VERSION = 1
VECTOR_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


@dataclass(frozen=True)
class ProjectionSpec:
    """How the stored vectors were projected: kind, seed and output dimension.

    ``input_dim`` is the raw gradient length; ``nnz`` the nonzeros per input
    coordinate of a sparse sketch (None for dense kinds).
    """

    kind: str = "unknown"
    seed: int | None = None
    dim: int | None = None
    input_dim: int | None = None
    nnz: int | None = None


@dataclass(frozen=True)
class Checkpoint:
    """One column of vectors: the checkpoint's name and its learning rate (weight)."""

    name: str
    lr: float | None = None
    column: str = ""


@dataclass
class TableMeta:
    """Everything a selection needs to know to trust a table's vectors."""

    kind: str = "pool"
    dim: int = 0
    vector_dtype: str = "float16"
    projection: ProjectionSpec = field(default_factory=ProjectionSpec)
    grad_type: str | None = None
    model: str | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    ingest: dict = field(default_factory=dict)

    def to_schema_metadata(self) -> dict[str, str]:
        data = asdict(self)
        data.pop("checkpoints")  # per-column field metadata, committed with each column
        ingest = data.pop("ingest")  # rewritten as ingestion progresses
        data["format_version"] = FORMAT_VERSION
        out = {META_KEY: json.dumps(data, sort_keys=True)}
        if ingest:
            out[INGEST_KEY] = json.dumps(ingest, sort_keys=True)
        return out

    @property
    def incomplete(self) -> bool:
        """True while an ingestion into this table has not finished."""
        return self.ingest.get("status") == "running"

    @classmethod
    def from_schema(cls, schema: pa.Schema, table: str) -> TableMeta:
        raw = (schema.metadata or {}).get(META_KEY.encode())
        if raw is None:
            raise GradstoreError(
                f"table {table!r} was not written by gradstore (no '{META_KEY}' metadata); "
                "import vectors with `gradstore import`"
            )
        data = json.loads(raw)
        data.pop("format_version", None)
        data["projection"] = ProjectionSpec(**data.get("projection") or {})
        ingest = (schema.metadata or {}).get(INGEST_KEY.encode())
        data["ingest"] = json.loads(ingest) if ingest else {}
        meta = cls(**data)
        meta.checkpoints = checkpoints_from_schema(schema)
        return meta

    @property
    def checkpoint_names(self) -> list[str]:
        return [c.name for c in self.checkpoints]

    @property
    def lrs(self) -> list[float | None]:
        return [c.lr for c in self.checkpoints]


def vector_column(index: int) -> str:
    return f"vec_{index}"


def norm_column(index: int) -> str:
    return f"norm_{index}"


def loss_column(index: int) -> str:
    return f"loss_{index}"


def checkpoint_fields(
    index: int, name: str, lr: float | None, dim: int, vector_dtype: str
) -> list[pa.Field]:
    """The three columns one checkpoint adds: vectors, norms, losses."""
    md = {"checkpoint": name, "lr": "" if lr is None else repr(float(lr))}
    return [
        pa.field(vector_column(index), pa.list_(VECTOR_DTYPES[vector_dtype], dim), metadata=md),
        pa.field(norm_column(index), pa.float32()),
        pa.field(loss_column(index), pa.float32()),
    ]


def checkpoints_from_schema(schema: pa.Schema) -> list[Checkpoint]:
    out = []
    i = 0
    while vector_column(i) in schema.names:
        md = schema.field(vector_column(i)).metadata or {}
        lr_text = md.get(b"lr", b"").decode()
        out.append(
            Checkpoint(
                name=md.get(b"checkpoint", str(i).encode()).decode(),
                lr=float(lr_text) if lr_text else None,
                column=vector_column(i),
            )
        )
        i += 1
    return out


def base_fields() -> list[pa.Field]:
    return [
        pa.field("id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("subtask", pa.string()),
        pa.field("tokens", pa.int32()),
        pa.field("content_hash", pa.string()),
    ]
