"""gradstore: an embedded gradient store with query-style training-data selection."""

from gradstore.errors import GradstoreError
from gradstore.store import ProjectionSpec, Selection, Store, open

__version__ = "0.1.0"

__all__ = ["GradstoreError", "ProjectionSpec", "Selection", "Store", "open", "__version__"]
