"""Ray, behind one door: everything above this package reaches Ray through the names here
(``import ray`` happens only inside this package, and only when a run asks for Ray).

* ``session(address)``: connect to (or start) a cluster for a block of work;
* ``DistributedPool``: a pool whose passes run as Ray tasks (selection);
* ``ingest_on_ray``: an ingestion sharded over Ray workers;
* ``require_ray``: the ``ray`` module, or one clear error naming the extra to install.
"""

from gradstore.distributed.cluster import cluster_resources, require_ray
from gradstore.distributed.cluster import ray_cluster as session
from gradstore.distributed.ingest import ingest_on_ray
from gradstore.distributed.pool import DistributedPool

__all__ = ["DistributedPool", "cluster_resources", "ingest_on_ray", "require_ray", "session"]
