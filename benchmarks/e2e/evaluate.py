"""Scoring a (fine-tuned) causal LM on exact-match test sets.

* ``answer_loss``: teacher-forced cross-entropy on the answer tokens, the same
  tokens (and the same chat rendering) gradstore trains on; the mean over
  examples of each example's mean token loss.
* ``greedy_answers`` / ``exact_match``: batched greedy decoding from the prompt
  as training renders it (the chat template with ``add_generation_prompt``, or
  gradstore's fallback for a tokenizer without one), left-padded, stopping at
  end of turn; an answer is right when it equals the reference after stripping
  whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradstore.grads.data import Record
from gradstore.grads.examples import tokenize_records
from gradstore.grads.per_example import collate, example_losses


def _records(rows: Sequence[dict]) -> list[Record]:
    return [Record(r["id"], i, f"row {i}", r) for i, r in enumerate(rows)]


def _batches(n: int, size: int, lengths: Sequence[int]) -> list[np.ndarray]:
    """Index batches of similar length (less padding), in a fixed order."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[s : s + size] for s in range(0, n, size)]


def _tokenized(tokenizer, rows: Sequence[dict], max_length: int):
    """The rows as gradstore trains on them (same rendering, same answer-token mask)."""
    report = tokenize_records(_records(rows), tokenizer, max_length)
    if report.skipped:
        raise ValueError(f"test examples without answer tokens: {report.skipped}")
    return report.examples


@torch.no_grad()
def answer_loss(model, tokenizer, rows: Sequence[dict], batch_size: int = 32,
                max_length: int = 256) -> float:
    ex = _tokenized(tokenizer, rows, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    losses = []
    for idx in _batches(len(ex), batch_size, [e.num_tokens for e in ex]):
        batch = collate([ex[i].input_ids for i in idx], [ex[i].loss_mask for i in idx], pad,
                        device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        losses.append(example_losses(logits, batch).float().cpu().numpy())
    return float(np.concatenate(losses).mean())


def _prompt_ids(tokenizer, rows: Sequence[dict], max_length: int) -> list[list[int]]:
    """Each row's training sequence up to its last answer: the prompt exactly as training
    renders it (chat template, or gradstore's fallback and BOS for a tokenizer without one)."""
    prompts = []
    for e in _tokenized(tokenizer, rows, max_length):
        m = e.loss_mask
        starts = np.flatnonzero(m & ~np.concatenate([[False], m[:-1]]))
        prompts.append(e.input_ids[: starts[-1]].tolist())
    return prompts


def _stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def greedy_answers(model, tokenizer, rows: Sequence[dict], batch_size: int = 32,
                   extra_tokens: int = 4, max_length: int = 256) -> list[str]:
    """Greedy completions of each row's prompt, in row order.

    Each batch may generate the longest reference answer's token count plus
    ``extra_tokens``: enough to be right, and to show a wrong longer answer.
    """
    prompts = _prompt_ids(tokenizer, rows, max_length)
    answer_len = [len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)
                      ["input_ids"]) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = _stop_ids(tokenizer)
    device = next(model.parameters()).device
    out: list[str] = [""] * len(rows)
    for idx in _batches(len(rows), batch_size, [len(p) for p in prompts]):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
            att[j, width - len(prompts[i]):] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=att.to(device), do_sample=False,
            max_new_tokens=max(answer_len[i] for i in idx) + extra_tokens,
            eos_token_id=stop, pad_token_id=pad, use_cache=True,
        )
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[j, width:], skip_special_tokens=True)
    return out


def is_correct(prediction: str, answer: str) -> bool:
    return prediction.strip() == answer.strip()


def exact_match(model, tokenizer, rows: Sequence[dict], batch_size: int = 32,
                max_length: int = 256) -> tuple[float, list[str]]:
    preds = greedy_answers(model, tokenizer, rows, batch_size, max_length=max_length)
    hits = [is_correct(p, r["messages"][-1]["content"]) for p, r in zip(preds, rows, strict=True)]
    return float(np.mean(hits)), preds
