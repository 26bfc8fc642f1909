"""Table provenance that travels with the data (Lance schema and field metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from gradstore.errors import GradstoreError
from gradstore.store.integrity import ID_CHECKSUM, ROW_CHECKSUM, DamagedTable

META_KEY = "gradstore"
INGEST_KEY = "gradstore.ingest"  # how an ingested table was made, and whether it is finished
FORMAT_VERSION = 1
VECTOR_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
FLOAT16_MAX = 65504.0  # the largest finite float16: stored vectors must stay below it


@dataclass(frozen=True)
class ProjectionSpec:
    """How the stored vectors were projected: kind, seed and output dimension.

    ``input_dim`` is the raw gradient length; ``nnz`` the nonzeros per input
    coordinate of a sparse sketch (None for dense kinds); ``layout`` what else the vectors
    depend on: the per-module block shapes of a factored projection (module count and a hash
    of every module's shape and block) and, for full-layer gradients (``--params``), the
    parameter set (count and a hash of names and shapes), joined by ``"; "``; None for LoRA
    gradients under the other kinds. Tables whose layouts differ are refused.
    """

    kind: str = "unknown"
    seed: int | None = None
    dim: int | None = None
    input_dim: int | None = None
    nnz: int | None = None
    layout: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint's vectors: its name, learning rate (weight) and vector column.

    ``column`` holds the table's primary gradient type; ``extra`` maps each further
    gradient type stored for the same examples (a target keeps the pool's type and
    plain SGD) to its column.
    """

    name: str
    lr: float | None = None
    column: str = ""
    extra: tuple[tuple[str, str], ...] = ()


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
    extra_types: list[str] = field(default_factory=list)
    """Gradient types stored beside ``grad_type`` (read from the columns, not saved here)."""

    def to_schema_metadata(self) -> dict[str, str]:
        data = asdict(self)
        data.pop("checkpoints")  # per-column field metadata, committed with each column
        data.pop("extra_types")  # the columns say which types are stored
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
        """The provenance kept in a table's schema (garbled: :class:`DamagedTable`)."""
        try:
            return cls._from_schema(schema, table)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DamagedTable(
                f"table {table!r}: its stored provenance cannot be read ({exc}); its "
                f"manifest is damaged: `gradstore restore STORE {table}` lists the versions"
            ) from None

    @classmethod
    def _from_schema(cls, schema: pa.Schema, table: str) -> TableMeta:
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
        data.pop("extra_types", None)
        meta = cls(**data)
        meta.checkpoints = checkpoints_from_schema(schema)
        meta.extra_types = [t for t, _ in meta.checkpoints[0].extra] if meta.checkpoints else []
        return meta

    @property
    def grad_types(self) -> list[str]:
        """Every gradient type stored, the primary one first (none known: empty)."""
        return ([self.grad_type] if self.grad_type else []) + self.extra_types

    def columns(self, grad_type: str | None = None) -> list[str]:
        """The vector column of each checkpoint for ``grad_type`` (None: the primary type)."""
        if grad_type is None or grad_type == self.grad_type:
            return [c.column for c in self.checkpoints]
        return [dict(c.extra)[grad_type] for c in self.checkpoints]

    @property
    def checkpoint_names(self) -> list[str]:
        return [c.name for c in self.checkpoints]

    @property
    def lrs(self) -> list[float | None]:
        return [c.lr for c in self.checkpoints]


def vector_column(index: int, grad_type: str | None = None) -> str:
    """``vec_3`` for the primary gradient type, ``vec_3_sgd`` for a further one."""
    return f"vec_{index}" if grad_type is None else f"vec_{index}_{grad_type}"


def norm_column(index: int, grad_type: str | None = None) -> str:
    return f"norm_{index}" if grad_type is None else f"norm_{index}_{grad_type}"


def norm_of(column: str) -> str:
    """The norm column that belongs to a vector column (``vec_3_sgd`` -> ``norm_3_sgd``)."""
    return "norm" + column.removeprefix("vec")


def checksum_of(column: str) -> str:
    """The checksum column of a vector column (``vec_3_sgd`` -> ``crc_3_sgd``)."""
    return "crc" + column.removeprefix("vec")


def unchecked_columns(schema: pa.Schema) -> list[str]:
    """The columns of a gradient table that have no checksum (a table written before
    gradstore kept them): vector columns without their ``crc_``, and ``id``/``row`` without
    ``crc_id``/``crc_row``. ``verify --add-checksums`` adds every one."""
    names = set(schema.names)
    out = [c for c in schema.names if c.startswith("vec_") and checksum_of(c) not in names]
    return out + [c for c, crc in (("id", ID_CHECKSUM), ("row", ROW_CHECKSUM))
                  if crc not in names]


def loss_column(index: int) -> str:
    return f"loss_{index}"


def checkpoint_fields(
    index: int, name: str, lr: float | None, dim: int, vector_dtype: str,
    extra_types: tuple[str, ...] | list[str] = (),
) -> list[pa.Field]:
    """The columns one checkpoint adds: vectors, norms, losses, then vectors and norms of
    each further gradient type."""
    md = {"checkpoint": name, "lr": "" if lr is None else repr(float(lr))}
    vec_type = pa.list_(VECTOR_DTYPES[vector_dtype], dim)
    fields = [
        pa.field(vector_column(index), vec_type, metadata=md),
        pa.field(norm_column(index), pa.float32()),
        pa.field(loss_column(index), pa.float32()),
        pa.field(checksum_of(vector_column(index)), pa.int64()),
    ]
    for t in extra_types:
        fields += [
            pa.field(vector_column(index, t), vec_type, metadata=md | {"grad_type": t}),
            pa.field(norm_column(index, t), pa.float32()),
            pa.field(checksum_of(vector_column(index, t)), pa.int64()),
        ]
    return fields


def type_fields(
    index: int, name: str, lr: float | None, dim: int, vector_dtype: str, grad_type: str
) -> list[pa.Field]:
    """The columns a further gradient type adds to checkpoint ``index``."""
    return checkpoint_fields(index, name, lr, dim, vector_dtype, [grad_type])[4:]


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
                extra=tuple(
                    (f.metadata[b"grad_type"].decode(), f.name)
                    for f in schema
                    if f.name.startswith(f"{vector_column(i)}_") and f.metadata
                    and b"grad_type" in f.metadata
                ),
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
        pa.field(ID_CHECKSUM, pa.int64()),
        pa.field(ROW_CHECKSUM, pa.int64()),
    ]


VECTOR_PREFIXES = ("vec_", "norm_", "crc_")
"""Prefixes of the vector columns, their norms and the checksums (not data fields)."""
UNQUERIED_PREFIXES = ("vec_", "crc_")
"""Prefixes of the columns no ``--where`` may name: the vectors and the checksums (the
per-checkpoint norms and losses it may)."""
FIELD_PREFIXES = (*VECTOR_PREFIXES, "loss_")
"""Prefixes of the columns gradstore computes per checkpoint (no data field may take one)."""


def is_data_field(name: str) -> bool:
    """A column kept from the data rows' own fields (``ingest --fields``), not one gradstore
    computes."""
    return name not in {f.name for f in base_fields()} and not name.startswith(FIELD_PREFIXES)


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """Zero-copy view of a fixed-size-list column as an (n, dim) array where possible."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten()  # respects slice offsets, unlike .values
    try:
        values = flat.to_numpy(zero_copy_only=True)
    except pa.ArrowInvalid:
        values = flat.to_numpy(zero_copy_only=False)
    return values.reshape(len(col), dim)
