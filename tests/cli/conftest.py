from tests.grads.conftest import chat_tokenizer, plain_tokenizer  # noqa: F401 - shared fixtures
