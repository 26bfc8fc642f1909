"""gradstore: an embedded gradient store with query-style training-data selection.

    store = gradstore.open("./store")
    store.ingest("pool", model=..., data="pool.jsonl", checkpoints=[...])
    sel = store.select("pool", target="mmlu", budget="5%")

See the README for the command line and :mod:`gradstore.api` for the Python API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradstore.api import PoolQuery, Store, Table, open
from gradstore.config import (
    GradientConfig,
    IngestConfig,
    ModelConfig,
    RayConfig,
    RunConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
)
from gradstore.errors import GradstoreError, TableConflict
from gradstore.ops.export import ExportSummary
from gradstore.store.meta import ProjectionSpec, TableMeta
from gradstore.store.selections import Selection

if TYPE_CHECKING:
    from gradstore.grads.ingestion import IngestSummary
    from gradstore.grads.warmup import WarmupSummary
    from gradstore.ops.pipeline import RunSummary

__version__ = "0.1.0"

_NEEDS_TORCH = {"IngestSummary": "gradstore.grads.ingestion",
                "WarmupSummary": "gradstore.grads.warmup",
                "RunSummary": "gradstore.ops.pipeline"}
"""Names whose modules import torch and transformers: loaded when first used, so that
``import gradstore`` and the commands that only read or write the store (info, import,
export, verify, restore) start without them."""


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        import importlib

        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module 'gradstore' has no attribute {name!r}")

__all__ = [
    "ExportSummary", "GradientConfig", "GradstoreError", "IngestConfig", "IngestSummary",
    "ModelConfig", "PoolQuery", "ProjectionSpec", "RayConfig", "RunConfig", "RunSummary",
    "SelectConfig", "Selection", "Store", "Table", "TableConflict", "TableMeta", "TrainConfig",
    "WarmupConfig", "WarmupSummary", "__version__", "open", "run", "warmup",
]


def warmup(config: WarmupConfig | None = None, /, **options) -> WarmupSummary:
    """LoRA warm-up on a seeded slice of the pool, one checkpoint per epoch.

    ``gradstore.warmup(model=..., data="pool.jsonl", out="warmup", fraction=0.05, epochs=4)``
    or ``gradstore.warmup(WarmupConfig(...))``; see :mod:`gradstore.grads.warmup`.
    """
    from gradstore.grads.warmup import warmup as run_warmup

    return run_warmup(config, **options)


def run(config: RunConfig | None = None, /, **options) -> RunSummary:
    """The whole pipeline in one resumable call: warm-up, ingestion of the pool and the
    targets, every selection and its export (``gradstore run``); see :class:`RunConfig`."""
    from gradstore.ops.pipeline import run_pipeline

    return run_pipeline(config if config is not None else RunConfig.from_options(**options))
