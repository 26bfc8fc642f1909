"""tokenize_records: formats, loss masks, truncation, skips and content hashes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from transformers import AutoTokenizer

from gradstore.errors import GradstoreError
from gradstore.grads.data import Record
from gradstore.grads.examples import (
    FORMATS,
    TokenizedExample,
    detect_format,
    tokenize_record,
    tokenize_records,
)

from .conftest import DEFAULT_SYSTEM

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And two plus two?"},
    {"role": "assistant", "content": "Four."},
]


def rec(fields: dict, i: int = 0, rid: str | None = None) -> Record:
    return Record(id=rid if rid is not None else str(i), index=i, where=f"t.jsonl line {i + 1}",
                  fields=fields)


def one(tokenizer, fields: dict, max_length: int = 2048, **kw) -> TokenizedExample:
    out = tokenize_record(rec(fields), tokenizer, max_length, **kw)
    assert isinstance(out, TokenizedExample), out
    return out


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def masked_texts(tok, ex: TokenizedExample) -> list[str]:
    return [tok.decode(ex.input_ids[a:b].tolist()) for a, b in runs(ex.loss_mask)]


# --------------------------------------------------------------------------- chat


def test_chat_template_multi_turn_masks_assistant_turns_only(chat_tokenizer):
    tok = chat_tokenizer
    ex = one(tok, {"messages": MULTI_TURN})
    # ids are exactly what transformers' own apply_chat_template(tokenize=True) gives
    ref = tok.apply_chat_template(MULTI_TURN, tokenize=True)
    ref_ids = ref["input_ids"] if hasattr(ref, "keys") else ref
    assert ex.input_ids.tolist() == list(ref_ids)
    assert ex.input_ids.dtype == np.int64 and ex.loss_mask.dtype == bool
    assert masked_texts(tok, ex) == ["Paris.<|im_end|>\n", "Four.<|im_end|>\n"]
    unmasked = tok.decode(ex.input_ids[~ex.loss_mask].tolist())
    assert "Be brief." in unmasked and "capital of France" in unmasked
    assert "two plus two" in unmasked and "Paris" not in unmasked
    assert unmasked.endswith("<|im_start|>assistant\n")
    assert not ex.loss_mask[0]
    assert ex.num_tokens == len(ref_ids)
    assert ex.num_loss_tokens == len(enc(tok, "Paris.<|im_end|>\nFour.<|im_end|>\n"))


def test_chat_template_default_system_prompt_not_in_loss(chat_tokenizer):
    msgs = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}]
    ex = one(chat_tokenizer, {"messages": msgs})
    text = chat_tokenizer.decode(ex.input_ids.tolist())
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    assert masked_texts(chat_tokenizer, ex) == ["Hi there<|im_end|>\n"]


def test_fallback_template_hand_computed_mask(plain_tokenizer):
    tok = plain_tokenizer
    assert tok.chat_template is None
    ex = one(tok, {"messages": MULTI_TURN, "dataset": "x"})
    pieces = [
        ("<|system|>\nBe brief.\n<|user|>\nWhat is the capital of France?\n<|assistant|>\n", False),
        ("Paris.</s>\n", True),
        ("<|user|>\nAnd two plus two?\n<|assistant|>\n", False),
        ("Four.</s>\n", True),
    ]
    ids, mask = [tok.bos_token_id], [False]
    for text, target in pieces:
        t = enc(tok, text)
        ids += t
        mask += [target] * len(t)
    assert ex.input_ids.tolist() == ids
    assert ex.loss_mask.tolist() == mask
    assert masked_texts(tok, ex) == ["Paris.</s>\n", "Four.</s>\n"]


def test_fallback_allows_leading_assistant_but_template_errors(plain_tokenizer, chat_tokenizer):
    msgs = [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Ok"}]
    ex = one(plain_tokenizer, {"messages": msgs})
    assert masked_texts(plain_tokenizer, ex) == ["Hi.</s>\n"]
    with pytest.raises(GradstoreError, match=r"line 1: the conversation starts with an assistant"):
        one(chat_tokenizer, {"messages": msgs})


def test_template_that_rewrites_earlier_turns_is_rejected(chat_tokenizer):
    tok = AutoTokenizer.from_pretrained(chat_tokenizer.name_or_path)
    tok.chat_template = (  # hides earlier assistant turns, like reasoning templates do
        "{% for m in messages %}"
        "{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n...<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(GradstoreError, match=r"line 1: the chat template's rendering .*not a text"):
        one(tok, {"messages": MULTI_TURN})
    # one assistant turn is fine with the same template
    ex = one(tok, {"messages": MULTI_TURN[:3]})
    assert masked_texts(tok, ex) == ["Paris.<|im_end|>\n"]


def test_chat_template_error_becomes_gradstore_error(chat_tokenizer):
    tok = AutoTokenizer.from_pretrained(chat_tokenizer.name_or_path)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(GradstoreError, match=r"line 1: the tokenizer's chat template failed.*must"):
        one(tok, {"messages": MULTI_TURN})


def test_chat_without_assistant_is_skipped_with_reason(chat_tokenizer):
    recs = [
        rec({"messages": [{"role": "user", "content": "Hello"}]}, 0, "u1"),
        rec({"text": "Hello world"}, 1, "t1"),
        rec({"text": ""}, 2, "t2"),
        rec({"messages": []}, 3, "m0"),
    ]
    report = tokenize_records(recs, chat_tokenizer)
    assert [e.id for e in report.examples] == ["t1"]
    assert report.skipped == {"no response tokens": ["u1", "t2", "m0"]}
    assert report.truncated == 0
    assert tokenize_record(recs[0], chat_tokenizer, 64) == "no response tokens"


# --------------------------------------------------------------------------- other formats


@pytest.mark.parametrize("which", ["chat_tokenizer", "plain_tokenizer"])
def test_prompt_completion_mask_is_completion_plus_eos(which, request):
    tok = request.getfixturevalue(which)
    ex = one(tok, {"prompt": "Question: two plus two?\nAnswer:", "completion": " Four."})
    bos = [tok.bos_token_id] if which == "plain_tokenizer" else []
    prompt = enc(tok, "Question: two plus two?\nAnswer:")
    comp = enc(tok, " Four.")
    assert ex.input_ids.tolist() == bos + prompt + comp + [tok.eos_token_id]
    assert ex.loss_mask.tolist() == [False] * (len(bos) + len(prompt)) + [True] * (len(comp) + 1)
    assert masked_texts(tok, ex) == [" Four." + tok.eos_token]


def test_prompt_completion_empty_completion_trains_on_eos_only(plain_tokenizer):
    ex = one(plain_tokenizer, {"prompt": "Say nothing.", "completion": ""})
    assert ex.num_loss_tokens == 1
    assert ex.input_ids[ex.loss_mask].tolist() == [plain_tokenizer.eos_token_id]


@pytest.mark.parametrize("which", ["chat_tokenizer", "plain_tokenizer"])
def test_alpaca_is_chat_with_instruction_and_input(which, request):
    tok = request.getfixturevalue(which)
    ex = one(tok, {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})
    same = one(tok, {"messages": [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]})
    assert ex.input_ids.tolist() == same.input_ids.tolist()
    assert ex.loss_mask.tolist() == same.loss_mask.tolist()
    eot = "<|im_end|>\n" if which == "chat_tokenizer" else "</s>\n"
    assert masked_texts(tok, ex) == ["5" + eot]

    no_input = one(tok, {"instruction": "Say hi.", "input": "", "output": "hi"})
    same = one(tok, {"messages": [
        {"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"},
    ]})
    assert no_input.input_ids.tolist() == same.input_ids.tolist()
    assert "Say hi.\n\n" not in tok.decode(no_input.input_ids.tolist())
    assert masked_texts(tok, no_input) == ["hi" + eot]


def test_text_loss_on_all_but_first(plain_tokenizer, chat_tokenizer):
    ex = one(plain_tokenizer, {"text": "The quick brown fox."})
    body = enc(plain_tokenizer, "The quick brown fox.")
    assert ex.input_ids.tolist() == [plain_tokenizer.bos_token_id] + body + [2]
    assert ex.loss_mask.tolist() == [False] + [True] * (len(body) + 1)

    ex = one(chat_tokenizer, {"text": "The quick brown fox."})  # no BOS: position 0 is text
    assert ex.input_ids.tolist() == body + [chat_tokenizer.eos_token_id]
    assert ex.loss_mask.tolist() == [False] + [True] * len(body)


def test_format_priority_and_detection():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert detect_format({"messages": msgs, "prompt": "p", "completion": "c", "text": "t"}, "w") \
        == "chat"
    assert detect_format({"prompt": "p", "completion": "c", "instruction": "i", "output": "o",
                          "text": "t"}, "w") == "prompt_completion"
    assert detect_format({"instruction": "i", "output": "o", "text": "t"}, "w") == "alpaca"
    assert detect_format({"text": "t", "prompt": "p", "id": 3}, "w") == "text"
    # a null field counts as absent (parquet rows of a mixed file)
    assert detect_format({"messages": None, "text": "t"}, "w") == "text"
    assert FORMATS == ("chat", "prompt_completion", "alpaca", "text")


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"question": "q", "answer": "a"}, r"row matches no example format \(its keys: question, "
                                           r"answer\); accepted formats: chat"),
        ({"messages": "hello"}, r"'messages' is a str; messages must be a list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, r"messages\[0\] has role 'tool'"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, r"messages\[0\] content is a list"),
        ({"messages": [{"content": "x"}]}, r"messages\[0\] is not a role/content object"),
        ({"prompt": 3, "completion": "c"}, r"field 'prompt' is a int.*prompt_completion"),
        ({"instruction": "i", "input": 5, "output": "o"}, r"field 'input' is a int.*alpaca"),
        ({"text": ["a"]}, r"field 'text' is a list"),
    ],
)
def test_malformed_rows_name_the_location(fields, pattern, plain_tokenizer):
    with pytest.raises(GradstoreError, match=r"t\.jsonl line 1: " + pattern):
        tokenize_record(rec(fields), plain_tokenizer, 64)


# --------------------------------------------------------------------------- truncation


def test_truncation_keeps_response_and_bos(plain_tokenizer):
    tok = plain_tokenizer
    prompt = "Write a short poem about the sea and the stars at night. " * 3
    full = one(tok, {"prompt": prompt, "completion": " Waves."})
    assert full.num_tokens > 16 and not full.truncated
    report = tokenize_records([rec({"prompt": prompt, "completion": " Waves."}, 0, "p")], tok, 16)
    (ex,) = report.examples
    assert report.truncated == 1 and ex.truncated
    assert ex.num_tokens == 16
    assert ex.input_ids.tolist() == [tok.bos_token_id] + full.input_ids[-15:].tolist()
    assert masked_texts(tok, ex) == [" Waves.</s>"]
    assert ex.content_hash != full.content_hash


def test_truncation_without_bos_takes_window_ending_at_response(chat_tokenizer):
    tok = chat_tokenizer
    prompt = "The quick brown fox jumps over the lazy dog. " * 3
    full = one(tok, {"prompt": prompt, "completion": " Yes."})
    ex = one(tok, {"prompt": prompt, "completion": " Yes."}, max_length=12)
    assert ex.input_ids.tolist() == full.input_ids[-12:].tolist()
    assert masked_texts(tok, ex) == [" Yes." + tok.eos_token]


def test_response_longer_than_max_length_keeps_its_end(plain_tokenizer):
    tok = plain_tokenizer
    completion = " two plus two equals four and three times three equals nine" * 2
    full = one(tok, {"prompt": "Math:", "completion": completion})
    ex = one(tok, {"prompt": "Math:", "completion": completion}, max_length=10)
    assert ex.input_ids.tolist() == [tok.bos_token_id] + full.input_ids[-9:].tolist()
    assert ex.loss_mask.tolist() == [False] + [True] * 9
    assert ex.input_ids[-1] == tok.eos_token_id


def test_response_early_keeps_the_head(chat_tokenizer):
    tok = chat_tokenizer
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 4},
    ]
    full = one(tok, {"messages": msgs})
    last = runs(full.loss_mask)[-1][1]
    ex = one(tok, {"messages": msgs}, max_length=last + 3)
    assert ex.truncated and ex.input_ids.tolist() == full.input_ids[: last + 3].tolist()
    assert masked_texts(tok, ex) == ["Yo<|im_end|>\n"]


def test_max_length_too_small(plain_tokenizer):
    with pytest.raises(GradstoreError, match=r"max_length 1 is too small"):
        tokenize_records([rec({"text": "a b"})], plain_tokenizer, max_length=1)
    ex = one(plain_tokenizer, {"text": "hello world"}, max_length=2)
    assert ex.num_tokens == 2 and ex.loss_mask.tolist() == [False, True]


# --------------------------------------------------------------------------- subtask, hashes


def test_subtask_field(plain_tokenizer):
    recs = [rec({"text": "a b", "subtask": "math", "topic": 7}, 0),
            rec({"text": "c d", "topic": "bio"}, 1)]
    default = tokenize_records(recs, plain_tokenizer).examples
    assert [e.subtask for e in default] == ["math", None]
    chosen = tokenize_records(recs, plain_tokenizer, subtask_field="topic").examples
    assert [e.subtask for e in chosen] == ["7", "bio"]
    with pytest.raises(GradstoreError, match=r"t\.jsonl line 2: no 'subtask' field"):
        tokenize_records(recs, plain_tokenizer, subtask_field="subtask")


def test_content_hash(plain_tokenizer):
    tok = plain_tokenizer
    a = one(tok, {"id": "x", "prompt": "Hello", "completion": " world"})
    b = tokenize_record(rec({"prompt": "Hello", "completion": " world"}, 5, "other"), tok, 64)
    assert a.content_hash == b.content_hash and b.id == "other" and b.index == 5
    ids = a.input_ids.astype("<i4").tobytes()
    assert a.content_hash == hashlib.sha256(
        ids + a.loss_mask.astype(np.uint8).tobytes()).hexdigest()[:32]

    # same ids, different mask: text "Hello world" vs prompt "Hello" + completion " world"
    t = one(tok, {"text": "Hello world"})
    assert t.input_ids.tolist() == a.input_ids.tolist()
    assert t.loss_mask.tolist() != a.loss_mask.tolist()
    assert t.content_hash != a.content_hash

    c = one(tok, {"prompt": "Hello", "completion": " World"})
    assert c.content_hash != a.content_hash
    with pytest.raises(ValueError):
        a.input_ids[0] = 5  # read-only arrays
