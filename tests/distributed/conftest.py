"""A real local Ray cluster for the distributed tests: ``ray.init(num_cpus=2)``, once."""

import pytest

ray = pytest.importorskip("ray", reason="no Ray extra: pip install gradstore[ray]")


@pytest.fixture(scope="session")
def ray_cluster():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


from tests.grads.conftest import chat_tokenizer, llama_dir  # noqa: E402, F401 - shared fixtures
