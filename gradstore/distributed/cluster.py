"""Connecting to Ray: ``local`` starts a cluster on this machine, anything else joins one.

Ray is an optional extra (``pip install gradstore[ray]``); without it every ``--ray``
path stops with one line saying so, before any work is done.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from gradstore.errors import GradstoreError

INSTALL_HINT = "pip install gradstore[ray]"
CONNECT_TIMEOUT = 5.0

# Every Ray process of ours: one Lance decode thread and one OpenMP thread per task,
# so that tasks on the same node do not oversubscribe its cores (docs/storage.md).
WORKER_ENV = {"LANCE_CPU_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def require_ray() -> ModuleType:
    """The ``ray`` module, or one clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise GradstoreError(
            f"--ray needs the Ray extra, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for others."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at ``address``."""
    hp = _host_port(address)
    if hp is None:
        raise GradstoreError(
            f"Ray address {address!r} is not 'local', 'auto', HOST:PORT or ray://HOST:PORT; "
            "give the head node's address as `ray start --head` printed it"
        )
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        raise GradstoreError(
            f"Ray cluster at {address!r} is not reachable ({exc.strerror or exc}); start one with "
            "`ray start --head` there, check the address, or use --ray local"
        ) from None


@contextmanager
def ray_cluster(address: str, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Connect to (or start) a Ray cluster for the duration of the block.

    ``local`` starts a cluster on this machine (``num_cpus`` cores, default all);
    ``auto`` joins the one ``ray start`` left on this node; ``HOST:PORT`` or
    ``ray://HOST:PORT`` joins a remote one. An already initialised Ray (a notebook,
    a test fixture, a Ray job) is used as it is and left running.
    """
    ray = require_ray()
    explicit = address not in ("local", "auto")
    if explicit:
        check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"logging_level": "ERROR", "log_to_driver": False}
    # Ray starts its processes with fork+exec: nothing of Lance runs in the forked child
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
        elif address == "auto":
            ray.init(address="auto", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except GradstoreError:
        raise
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise GradstoreError(
            f"could not connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}; "
            "start one with `ray start --head`, or use --ray local"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """CPUs and GPUs of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    return {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))}


CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_")


def task_env() -> dict:
    """The ``runtime_env`` of our tasks and actors: thread caps, plus the driver's
    object-store credentials (AWS_*, GOOGLE_*, AZURE_*) so that workers on other nodes
    can open an s3:// or gs:// store as the driver does."""
    env = {k: v for k, v in os.environ.items() if k.startswith(CREDENTIAL_PREFIXES)}
    return {"env_vars": env | WORKER_ENV}
