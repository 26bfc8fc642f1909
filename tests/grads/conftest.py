"""Local tokenizers for the grads tests: byte-level BPE, no hub access.

Both share one 300-token vocabulary (ids 0-4: ``<pad>``, ``<s>``, ``</s>``,
``<|im_start|>``, ``<|im_end|>``; then the 256 byte symbols; then merges), so any
text tokenises and ids fit the tiny models in ``tests/grads/models.py``
(``pad=0, bos=1, eos=2, vocab=300``).

* ``chat_tokenizer`` — ChatML template like SmolLM2's (default system prompt when
  the first message is not a system one); does not add BOS, like SmolLM2.
* ``plain_tokenizer`` — no chat template; adds ``<s>`` in front, like Llama.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

VOCAB_SIZE = 300
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
DEFAULT_SYSTEM = "You are a helpful assistant."

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful assistant. Answer the question in one sentence.",
    "Hello, how are you today? I am fine, thank you for asking.",
    "Translate the following sentence into German: the weather is nice.",
    "system user assistant instruction input output prompt completion text",
    "Write a short poem about the sea and the stars at night.",
    "Two plus two equals four. Three times three equals nine.",
] * 4


def _train_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    return tok


def _save(path: Path, tok: Tokenizer, chat_template: str | None):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    """Byte-level BPE with a ChatML chat template; adds no BOS."""
    tok = _train_bpe()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return _save(tmp_path_factory.mktemp("chat_tokenizer"), tok, CHATML_TEMPLATE)


@pytest.fixture(scope="session")
def plain_tokenizer(tmp_path_factory):
    """Byte-level BPE without a chat template; prepends ``<s>`` (id 1)."""
    tok = _train_bpe()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return _save(tmp_path_factory.mktemp("plain_tokenizer"), tok, None)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, chat_tokenizer):
    """A 2-layer Llama with the ChatML tokenizer, saved like a user's model directory."""
    from tests.grads.models import save_tiny_llama

    d = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    chat_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, plain_tokenizer):
    """A 2-layer GPT-2 with the plain tokenizer."""
    from tests.grads.models import save_tiny_gpt2

    d = save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))
    plain_tokenizer.save_pretrained(d)
    return d
