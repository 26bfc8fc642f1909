"""gradstore: an embedded gradient store with query-style training-data selection."""

from gradstore.errors import GradstoreError
from gradstore.store import ProjectionSpec, Selection, Store, open

__version__ = "0.1.0"

__all__ = [
    "GradstoreError", "ProjectionSpec", "Selection", "Store", "open", "warmup", "__version__",
]


def warmup(config=None, /, **options):  # -> gradstore.grads.warmup.WarmupSummary
    """LoRA warm-up on a seeded slice of the pool, one checkpoint per epoch.

    ``gradstore.warmup(model=..., data="pool.jsonl", out="warmup", fraction=0.05, epochs=4)``
    or ``gradstore.warmup(WarmupConfig(...))``; see :mod:`gradstore.grads.warmup`.
    """
    from gradstore.grads.warmup import warmup as run

    return run(config, **options)
