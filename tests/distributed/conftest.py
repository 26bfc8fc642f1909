"""A real local Ray cluster for the distributed tests: ``ray.init(num_cpus=2)``, once per
pytest worker that runs any of them.

Under pytest-xdist (``make test`` runs several workers, ``--dist loadgroup``) the tests here
run in two groups: the ingestion tests (``ray-ingest``: Ray workers that load a model) and
the rest (``ray``: scans, selections, the CLI, and the tiny modes of the benchmarks that
use Ray, whose ``select --ray`` children join this cluster by its address). Each group runs
in one worker, with one cluster for its tests; two groups on two workers are two clusters
(each ``ray.init`` in its own process starts its own), which halves the longest chain of
the suite."""

import pytest

ray = pytest.importorskip("ray", reason="no Ray extra: pip install gradstore[ray]")


@pytest.fixture(scope="session")
def ray_cluster():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_address(ray_cluster) -> str:
    """The tests' cluster's address, for a child process (``--ray ADDRESS``) to join it
    instead of starting a cluster of its own (a cluster's start and its workers' imports
    are seconds of CPU each time)."""
    return ray_cluster.get_runtime_context().gcs_address


from tests.grads.conftest import chat_tokenizer, llama_dir  # noqa: E402, F401 - shared fixtures


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if "tests/distributed/" in path:
            group = "ray-ingest" if path.endswith("test_ingest.py") else "ray"
            item.add_marker(pytest.mark.xdist_group(group))
