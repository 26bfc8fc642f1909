"""Scoring (gradstore.ops.evaluate), against plain one-example-at-a-time computations."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradstore.ops import evaluate

ROWS = [
    {"id": f"r{i}", "messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": a}]}
    for i, (q, a) in enumerate([
        ("Add 37 and 48.", "85"),
        ("Write 'green apple' in capital letters.", "GREEN APPLE"),
        ("Sort in ascending order: 41, 7, 19.", "7, 19, 41"),
        ("Hi", "Hello there, friend"),
        ("Reverse the letters of 'tamoki'. Then say it twice, please.", "ikomat"),
    ])
]


@pytest.fixture(scope="module")
def lm(llama_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return model, tok


def _prompt(tok, row):
    text = tok.apply_chat_template(row["messages"][:1], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def test_answer_loss_is_mean_cross_entropy_of_answer_tokens(lm):
    model, tok = lm
    expected = []
    for row in ROWS:
        full_text = tok.apply_chat_template(row["messages"], tokenize=False)
        full = tok(full_text, add_special_tokens=False)["input_ids"]
        start = len(_prompt(tok, row))
        logits = model(torch.tensor([full])).logits[0]
        targets = torch.tensor(full[start:])  # the answer, its end-of-turn and newline
        ce = torch.nn.functional.cross_entropy(logits[start - 1 : len(full) - 1], targets)
        expected.append(float(ce))
    got = evaluate.answer_loss(model, tok, ROWS, batch_size=2)
    assert got == pytest.approx(sum(expected) / len(expected), rel=1e-5)


@torch.no_grad()
def test_batched_greedy_equals_one_at_a_time(lm):
    model, tok = lm
    stop = set(evaluate._stop_ids(tok))
    expected = []
    for row in ROWS:
        ids = _prompt(tok, row)
        n_new = len(tok(row["messages"][1]["content"], add_special_tokens=False)["input_ids"])
        out = []
        for _ in range(n_new + 4):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
        expected.append(tok.decode(out, skip_special_tokens=True))
    # batches of 2 and 3 mix prompt lengths, so left padding is exercised; but a batch
    # may decode longer than one example alone (its longest answer), so compare prefixes
    got = evaluate.greedy_answers(model, tok, ROWS, batch_size=3)
    for g, e in zip(got, expected, strict=True):
        assert g.startswith(e) or e.startswith(g), (g, e)
    alone = [evaluate.greedy_answers(model, tok, [r], batch_size=1)[0] for r in ROWS]
    assert alone == expected


@torch.no_grad()
def test_a_tokenizer_without_chat_template_gets_the_training_rendering(gpt2_dir):
    """No chat template: the prompt is gradstore's fallback rendering after BOS, as in
    training (apply_chat_template would fail), and decoding continues from it."""
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    assert tok.chat_template is None
    prompts = evaluate._prompt_ids(tok, ROWS, 256)
    for row, got in zip(ROWS, prompts, strict=True):
        text = f"<|user|>\n{row['messages'][0]['content']}\n<|assistant|>\n"
        assert got == [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    ids, out = prompts[0], []
    for _ in range(len(tok("85", add_special_tokens=False)["input_ids"]) + 4):
        nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt in evaluate._stop_ids(tok):
            break
        out.append(nxt)
    assert evaluate.greedy_answers(model, tok, ROWS[:1]) == [tok.decode(out,
                                                                        skip_special_tokens=True)]


def test_exact_match_strips_whitespace_only():
    assert evaluate.is_correct(" 85\n", "85")
    assert not evaluate.is_correct("85.", "85")
    assert not evaluate.is_correct("The answer is 85", "85")


def memorised(lm, rows):
    """A copy of the model trained (all weights, Adam) until it reproduces ``rows``'
    renderings token for token: a model that gets those rows right."""
    import copy

    model, tok = lm
    model = copy.deepcopy(model).train()
    seqs = [tok(tok.apply_chat_template(r["messages"], tokenize=False),
                add_special_tokens=False)["input_ids"] for r in rows]
    labels = [[-100] * len(_prompt(tok, r)) + s[len(_prompt(tok, r)):]  # the answers only
              for r, s in zip(rows, seqs, strict=True)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = sum(model(torch.tensor([s]), labels=torch.tensor([t])).loss
                   for s, t in zip(seqs, labels, strict=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if float(loss) < 1e-2 * len(seqs):  # measured: ~50 steps
            break
    return model.eval()


def teacher_forced_by_hand(model, tok, row, stop) -> bool:
    """Every token from the answer's start through its end-of-turn token is the argmax of
    the model given the full gold rendering before it (one row, no batching)."""
    full = tok(tok.apply_chat_template(row["messages"], tokenize=False),
               add_special_tokens=False)["input_ids"]
    start = len(_prompt(tok, row))
    end = next(i for i in range(start, len(full)) if full[i] in stop) + 1
    pred = model(torch.tensor([full])).logits[0].argmax(-1)
    return all(int(pred[t - 1]) == full[t] for t in range(start, end))


@torch.no_grad()
def test_teacher_forced_exact_match_by_hand(lm):
    """Teacher-forced exact match against a one-row-at-a-time argmax on the full chat
    rendering, for an untrained model (all wrong) and one that memorised two of the rows
    (those right, and greedy decoding agrees)."""
    _, tok = lm
    stop = set(evaluate._stop_ids(tok))
    with torch.enable_grad():
        taught = memorised(lm, ROWS[:2])
    # the start of a memorised answer is not the answer: its end-of-turn token is wrong
    cut = ROWS[1] | {"id": "cut", "messages": [ROWS[1]["messages"][0],
                                               {"role": "assistant", "content": "GREEN"}]}
    for model in (lm[0], taught):
        want = [teacher_forced_by_hand(model, tok, r, stop) for r in [*ROWS, cut]]
        got = evaluate.answer_scores(model, tok, [*ROWS, cut], batch_size=2)
        assert got.exact.tolist() == want
    assert want[-1] is False
    assert not evaluate.answer_scores(lm[0], tok, ROWS).exact.any()
    got = evaluate.answer_scores(taught, tok, ROWS, batch_size=3).exact
    assert got[:2].all()
    greedy = [evaluate.is_correct(p, r["messages"][-1]["content"]) for p, r in
              zip(evaluate.greedy_answers(taught, tok, ROWS), ROWS, strict=True)]
    assert greedy[:2] == [True, True]
    assert all(g for g, t in zip(greedy, got, strict=True) if t)  # right teacher-forced: right


def test_rows_without_an_answer_are_one_clear_error(lm):
    from gradstore.errors import GradstoreError

    model, tok = lm
    bad = [{"id": "x", "messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(GradstoreError, match="cannot be scored"):
        evaluate.answer_scores(model, tok, bad)
