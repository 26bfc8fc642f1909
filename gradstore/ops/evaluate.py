"""Fine-tuning a model on a selection, and scoring it on held-out examples: the code the
end-to-end benchmark runs (and ``gradstore evaluate`` builds on).

Training (:func:`finetune`) is gradstore's own LoRA trainer (``gradstore.warmup``) with one
setting for every selection: a selection of n examples runs
``max(1, round(passes / n))`` epochs (:class:`TrainSettings`), so small budgets are not
starved of steps and a comparison is about *which* examples, not how much training.
Inside ``gradstore.grads.model.shared_models()`` the base model is loaded once for every
run; :class:`Adapted` lends it with a trained adapter.

Scoring a row ``{"messages": [..., {"role": "assistant", "content": answer}]}``:

* :func:`answer_scores`: one teacher-forced forward pass gives both the answer-token loss
  (cross-entropy over the tokens gradstore trains on, the chat rendering included; the
  mean over an example's tokens) and **teacher-forced exact match**: every token of the
  final answer, up to and including its end-of-turn token, is the model's argmax given
  the gold prefix. A model that passes it generates exactly the gold answer greedily.
* :func:`greedy_answers` / :func:`exact_match`: batched greedy decoding from the prompt as
  training renders it, left-padded, stopping at end of turn; right when the text equals
  the reference after stripping whitespace (a different tokenisation of the same text
  counts here, not under teacher forcing). Slower: one forward pass per generated token.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gradstore.config import TrainSettings, WarmupConfig
from gradstore.devices import resolve_device
from gradstore.errors import GradstoreError
from gradstore.grads.data import Record
from gradstore.grads.examples import TokenizedExample, tokenize_records
from gradstore.grads.model import load_model, release_model, resolve_dtype
from gradstore.grads.per_example import collate, example_losses
from gradstore.grads.warmup import KEEP_LAST, warmup


def finetune(model: str, gguf_file: str | None, data: Path, out: Path, settings: TrainSettings,
             n: int, seed: int, device: str = "cpu", epochs: int | None = None,
             weight_field: str | None = None) -> Path:
    """Train LoRA on every example of ``data`` (n of them); returns the final checkpoint.

    ``weight_field`` names the rows' loss-weight field (an export's ``weight``).

    Always from scratch: a job interrupted before its result was written is redone
    (only its final checkpoint is written, which a resumed warm-up could not continue from).
    """
    shutil.rmtree(out, ignore_errors=True)
    cfg = WarmupConfig.from_options(
        model=model, gguf_file=gguf_file, data=str(data), out=str(out), fraction=1.0,
        epochs=epochs or settings.epochs_for(n), lr=settings.lr,
        warmup_ratio=settings.warmup_ratio, batch_size=settings.batch_size,
        max_length=settings.max_length, lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha, lora_layers=settings.lora_layers, seed=seed,
        device=device, weight_field=weight_field, progress=False,
    )
    summary = warmup(cfg, keep=KEEP_LAST)  # only the final adapter is evaluated
    return Path(summary.checkpoints[-1].path)


class Adapted:
    """``with Adapted(model, gguf, ckpt) as lm:`` the base model with a trained adapter
    (or none), in eval mode; the base model is given back afterwards."""

    def __init__(self, model: str, gguf_file: str | None, adapter: Path | None,
                 device: str = "cpu"):
        self.args = (model, gguf_file)
        self.adapter, self.device = adapter, resolve_device(device)

    def __enter__(self):
        dtype = resolve_dtype("auto", self.device)
        self.base = load_model(*self.args, dtype, self.device, progress=False)
        if self.adapter is None:
            self.lm = self.base
        else:
            from peft import PeftModel

            self.lm = PeftModel.from_pretrained(self.base, str(self.adapter)).to(self.device)
        self.lm.eval()
        return self.lm

    def __exit__(self, *exc) -> None:
        release_model(self.lm)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


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
        raise GradstoreError(
            f"{report.num_skipped} test example(s) cannot be scored ({report.skipped}); give "
            "every row an assistant answer, or a larger --max-length")
    return report.examples


@dataclass
class Scores:
    """Per row, in row order: the mean answer-token loss and teacher-forced exact match."""

    loss: np.ndarray
    exact: np.ndarray

    @property
    def mean_loss(self) -> float:
        return float(self.loss.mean())

    @property
    def accuracy(self) -> float:
        return float(self.exact.mean())


def _last_answer_start(loss_mask: np.ndarray) -> int:
    """Where the last run of loss tokens (the final answer) begins."""
    m = np.asarray(loss_mask, dtype=bool)
    return int(np.flatnonzero(m & ~np.concatenate([[False], m[:-1]]))[-1])


def final_answer(example: TokenizedExample, stop: set[int]) -> np.ndarray:
    """Positions of the final answer's tokens in ``example``: the last run of loss tokens,
    up to and including its first end-of-turn token (what greedy decoding would produce
    before it stops; the rendering's newline after it is not part of the answer)."""
    m = np.asarray(example.loss_mask, dtype=bool)
    start = _last_answer_start(m)
    end = start + int(np.argmin(np.append(m[start:], False)))  # the run's end
    span = np.arange(start, end)
    ids = np.asarray(example.input_ids)[span]
    ends = np.flatnonzero(np.isin(ids, list(stop)))
    return span if not len(ends) else span[: ends[0] + 1]


@torch.no_grad()
def answer_scores(model, tokenizer, rows: Sequence[dict], batch_size: int = 32,
                  max_length: int = 256) -> Scores:
    """Answer-token loss and teacher-forced exact match of every row, from one forward
    pass per batch (see the module's docstring)."""
    ex = _tokenized(tokenizer, rows, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = set(_stop_ids(tokenizer))
    device = next(model.parameters()).device
    loss, exact = np.zeros(len(ex)), np.zeros(len(ex), dtype=bool)
    for idx in _batches(len(ex), batch_size, [e.num_tokens for e in ex]):
        batch = collate([ex[i].input_ids for i in idx], [ex[i].loss_mask for i in idx], pad,
                        device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss[idx] = example_losses(logits, batch).float().cpu().numpy()
        right = (logits.argmax(-1)[:, :-1] == batch.input_ids[:, 1:]).cpu().numpy()
        for j, i in enumerate(idx):  # token t is predicted at position t - 1
            exact[i] = bool(right[j, final_answer(ex[i], stop) - 1].all())
    return Scores(loss, exact)


def answer_loss(model, tokenizer, rows: Sequence[dict], batch_size: int = 32,
                max_length: int = 256) -> float:
    """The mean over rows of each row's mean answer-token loss."""
    return answer_scores(model, tokenizer, rows, batch_size, max_length).mean_loss


def _prompt_ids(tokenizer, rows: Sequence[dict], max_length: int) -> list[list[int]]:
    """Each row's training sequence up to its last answer: the prompt exactly as training
    renders it (chat template, or gradstore's fallback and BOS for a tokenizer without one)."""
    return [e.input_ids[: _last_answer_start(e.loss_mask)].tolist()
            for e in _tokenized(tokenizer, rows, max_length)]


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
