"""The LanceDB gradient store."""

from gradstore.store.meta import Checkpoint, ProjectionSpec, TableMeta
from gradstore.store.selections import Selection
from gradstore.store.store import Store, open

__all__ = ["Checkpoint", "ProjectionSpec", "Selection", "Store", "TableMeta", "open"]
