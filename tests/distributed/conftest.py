"""A real local Ray cluster for the distributed tests: ``ray.init(num_cpus=2)``, once per
pytest worker that runs any of them.

Under pytest-xdist (``make test`` runs two workers) these tests are spread over both
workers like the rest, and each worker starts its own cluster at its first Ray test. (They
were once kept in groups with ``xdist_group`` marks, which ``--dist loadgroup`` reads from a
suffix of the test's id; pytest 9.2 builds ids in a way that drops the suffix, so the groups
had no effect, and the suite ran as fast without them: ``docs/measurements.md``.) A CLI
child process joins its worker's cluster by address (``ray_address``)."""

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

