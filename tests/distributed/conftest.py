"""A real local Ray cluster for the distributed tests: ``ray.init(num_cpus=2)``, once.

Under pytest-xdist (``make test`` runs two workers) every test here runs in one worker
(``xdist_group("ray")``, with ``--dist loadgroup``): one cluster for all of them, which
takes both cores while the other worker runs the rest of the suite."""

import pytest

ray = pytest.importorskip("ray", reason="no Ray extra: pip install gradstore[ray]")


@pytest.fixture(scope="session")
def ray_cluster():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


from tests.grads.conftest import chat_tokenizer, llama_dir  # noqa: E402, F401 - shared fixtures


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/distributed/" in str(item.fspath):
            item.add_marker(pytest.mark.xdist_group("ray"))
