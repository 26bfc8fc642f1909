from tests.grads.conftest import (  # noqa: F401 - shared fixtures
    chat_tokenizer,
    gpt2_dir,
    llama_dir,
    plain_tokenizer,
)
