"""A real local Ray cluster for the distributed tests: ``ray.init(num_cpus=2)`` at the first
of them that a pytest worker runs, stopped when the worker's next test is not one of them
(an idle cluster's nine processes cost CPU all the while: 1.6 s each 30 s here).

Under pytest-xdist (``make test``: two workers, ``--dist worksteal``) the collection is
ordered (``tests/conftest.py``) so that each worker starts on its half of these tests and
runs them one after another on one cluster; a worker that steals a Ray test later starts
its cluster again then: a cost, never a wrong answer. (Grouping them with
``xdist_group`` marks has no effect under pytest 9.2: ``--dist loadgroup`` reads the group
from a suffix that pytest 9.2 drops from test ids.) A CLI child process joins its worker's
cluster by address (``ray_address``)."""

import pytest

from tests.conftest import RAY_TESTS

ray = pytest.importorskip("ray", reason="no Ray extra: pip install gradstore[ray]")


@pytest.fixture
def ray_cluster():
    """This worker's cluster, started if it is not running."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    return ray


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    """Stop the cluster after the last Ray test in a row (this hook sees only the tests of
    this folder; ``nextitem`` is the worker's next test, None when it has none queued)."""
    if ray.is_initialized() and (nextitem is None or RAY_TESTS not in nextitem.nodeid):
        ray.shutdown()


@pytest.fixture
def ray_address(ray_cluster) -> str:
    """The tests' cluster's address, for a child process (``--ray ADDRESS``) to join it
    instead of starting a cluster of its own (a cluster's start and its workers' imports
    are seconds of CPU each time)."""
    return ray_cluster.get_runtime_context().gcs_address


from tests.grads.conftest import chat_tokenizer, llama_dir  # noqa: E402, F401 - shared fixtures

