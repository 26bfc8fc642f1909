"""A real local Ray cluster for the distributed tests: ``ray.init(num_cpus=2)``, once per
pytest worker that runs any of them.

Under pytest-xdist (``make test`` runs several workers, ``--dist loadgroup``) the tests here
run in three groups: the ingestion tests (``ray-ingest``: Ray workers that load a model),
the tiny modes of the benchmarks that use Ray (``ray-bench``) and the rest (``ray``: scans,
selections, the CLI). Each group runs in one worker; a worker starts one cluster for all
the groups it runs, so there are at most as many clusters as workers, and three groups
balance better between two workers than two uneven ones. The CLI's children (``--ray
ADDRESS``, the ``ray_address`` fixture) join the worker's cluster instead of each
starting one; one test starts its own (``--ray local``), as a user without a cluster
does."""

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
    """The tests' running cluster's address, for a CLI child (``--ray ADDRESS``) to join
    instead of starting a cluster of its own."""
    return ray_cluster.get_runtime_context().gcs_address


from tests.grads.conftest import chat_tokenizer, llama_dir  # noqa: E402, F401 - shared fixtures


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if "tests/distributed/" in path:
            group = ("ray-ingest" if path.endswith("test_ingest.py") else
                     "ray-bench" if path.endswith("test_bench_tiny.py") else "ray")
            item.add_marker(pytest.mark.xdist_group(group))
