"""Warm-up: a short LoRA run on a random slice of the pool, saving the gradient trajectory.

One checkpoint per epoch, in the layout `gradstore ingest --checkpoint` reads:
``checkpoint-<step>/`` holds the peft adapter (``adapter_model.safetensors`` +
``adapter_config.json``), the AdamW state (``optimizer.pt``, with parameter names)
and ``gradstore_checkpoint.json`` with the learning rate that weighs the checkpoint
in ``select``: the mean learning rate of the epoch's optimizer steps, as LESS weighs
its checkpoints (the rate in force at the very end of a linear decay is zero).

A checkpoint is written to a temporary directory and renamed into place, so a
directory named ``checkpoint-*`` is always complete. Running the same command
again after an interruption continues from the last checkpoint (adapter,
optimizer, schedule, data order and RNG state restored) and ends with the same
weights as an uninterrupted run; a finished run is not repeated.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gradstore.config import (
    ModelConfig,
    TrainConfig,
    WarmupConfig,
    lora_layer_indices,
    settings_of,
)
from gradstore.devices import resolve_device
from gradstore.errors import GradstoreError
from gradstore.grads.data import Record, read_records
from gradstore.grads.examples import TokenizedExample, data_fingerprint, tokenize_records
from gradstore.grads.model import (
    load_adapter_weights,
    load_model,
    load_tokenizer,
    model_identity,
    pick_lora_targets,
    release_model,
    resolve_dtype,
)
from gradstore.grads.optimizer_state import CHECKPOINT_INFO, decays
from gradstore.grads.per_example import collate

RUN_INFO = "gradstore_warmup.json"
CHECKPOINT_PREFIX = "checkpoint-"
_TORCH_STATE = "training_state.pt"


def training_settings(cfg: WarmupConfig) -> dict[str, Any]:
    """What decides the weights: a rerun into the same directory must match these (one flat
    dict, the same keys as a run written before the configs were composed)."""
    d = {k: v for k, v in settings_of(cfg).items()
         if k not in ("out", "device", "overwrite", "progress", "data", "encoding",
                      "gradient_checkpointing")}
    d["model"] = model_identity(cfg.lm.model, cfg.lm.gguf_file)
    d["lora_targets"] = list(cfg.train.lora_targets) if cfg.train.lora_targets else None
    return d


@dataclass
class CheckpointSummary:
    path: str
    epoch: int
    step: int
    lr: float
    lr_at_end: float
    mean_loss: float


@dataclass
class WarmupSummary:
    """What a warm-up run produced."""

    out: str
    checkpoints: list[CheckpointSummary]
    examples: int
    skipped: dict[str, list[str]]
    steps: int
    resumed_from: int
    seconds: float
    status: str = "complete"

    @property
    def checkpoint_paths(self) -> list[str]:
        return [c.path for c in self.checkpoints]

    def lines(self) -> list[str]:
        out = [
            f"warm-up in {self.out}: {self.examples} examples, {self.steps} optimizer steps, "
            f"{len(self.checkpoints)} checkpoints ({self.status}, {self.seconds:.0f}s)"
        ]
        if self.resumed_from:
            out.append(f"  resumed after epoch {self.resumed_from}")
        for c in self.checkpoints:
            out.append(
                f"  {c.path}  epoch {c.epoch}  step {c.step}  lr {c.lr:.3g} (mean of the "
                f"epoch)  loss {c.mean_loss:.4f}"
            )
        for reason, ids in self.skipped.items():
            out.append(f"  skipped {len(ids)} ({reason}): {', '.join(ids[:5])}"
                       + (" ..." if len(ids) > 5 else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"checkpoint_paths": self.checkpoint_paths}


def choose_subset(records: list[Record], cfg: TrainConfig) -> list[Record]:
    """The seeded random slice of the pool trained on, in pool order."""
    n = cfg.num_examples or max(1, round(cfg.fraction * len(records)))
    if n > len(records):
        raise GradstoreError(
            f"--num-examples {n} exceeds the {len(records)} examples of the data file"
        )
    rng = np.random.default_rng([cfg.seed, 0x5741524D])  # "WARM"
    picked = np.sort(rng.choice(len(records), size=n, replace=False))
    return [records[i] for i in picked]


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear up, linear down.

    The Hugging Face Trainer's ``linear`` schedule, so results compare with LESS's warm-up.
    """
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x45504F43, epoch]).permutation(n)  # "EPOC"


def _completed(out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out.glob(f"{CHECKPOINT_PREFIX}*"):
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", p.name)
        if m and p.is_dir() and (p / CHECKPOINT_INFO).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def loss_weights(records: list[Record], examples: list[TokenizedExample],
                 field: str | None) -> dict[str, float] | None:
    """Each example's loss weight from ``field`` of its row, scaled to mean 1 (None: no
    field named, every example counts the same)."""
    if field is None:
        return None
    by_id = {r.id: r for r in records}
    raw = {}
    for ex in examples:
        rec = by_id[ex.id]
        value = rec.fields.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise GradstoreError(
                f"{rec.where}: loss weight field {field!r} is {value!r}, not a number >= 0; "
                "give every row a weight or drop --weight-field"
            )
        raw[ex.id] = float(value)
    total = sum(raw.values())
    if total <= 0:
        raise GradstoreError(f"every loss weight in field {field!r} is 0; nothing to train on")
    return {k: v * len(raw) / total for k, v in raw.items()}


class Trainer:
    """LoRA training with AdamW and a linear schedule, checkpointed per epoch."""

    def __init__(self, model: ModelConfig, cfg: TrainConfig, examples: list[TokenizedExample],
                 pad_id: int, weights: dict[str, float] | None = None, progress: bool = False):
        from peft import LoraConfig, get_peft_model

        self.cfg, self.examples, self.pad_id = cfg, examples, pad_id
        self.weights = weights
        self.device = resolve_device(model.device)
        dtype = resolve_dtype(model.dtype, self.device)
        lm = load_model(model.model, model.gguf_file, dtype, self.device, progress=progress)
        layers = None
        if cfg.lora_layers:
            layers = lora_layer_indices(cfg.lora_layers,
                                        getattr(lm.config, "num_hidden_layers", None))
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=pick_lora_targets(lm, cfg.lora_targets), bias="none",
            layers_to_transform=layers or None,
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                self.model = get_peft_model(lm, lora).to(self.device)
            except ValueError as exc:
                raise GradstoreError(
                    f"LoRA targets/layers do not fit this model: {exc}; pass module names "
                    "that exist (--lora-targets q_proj,v_proj) and layers it has"
                ) from exc
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [(n, p) for n, p in named if decays(n)]
        no_decay = [(n, p) for n, p in named if not decays(n)]
        groups = [{"params": [p for _, p in decay], "param_names": [n for n, _ in decay],
                   "weight_decay": cfg.weight_decay}]
        if no_decay:
            groups.append({"params": [p for _, p in no_decay],
                           "param_names": [n for n, _ in no_decay], "weight_decay": 0.0})
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        n = len(examples)
        self.batches_per_epoch = -(-n // cfg.batch_size)
        self.steps_per_epoch = -(-self.batches_per_epoch // cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.step = 0

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * linear_schedule(step, self.total_steps, self.warmup_steps)

    def restore(self, path: Path) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, load_adapter_weights(path))
        self.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        )
        state = torch.load(path / _TORCH_STATE, map_location="cpu", weights_only=False)
        torch.set_rng_state(state["cpu_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = int(json.loads((path / CHECKPOINT_INFO).read_text())["global_step"])

    def _loss(self, batch_examples: list[TokenizedExample]) -> torch.Tensor:
        """Summed cross-entropy over the batch's loss tokens (each example's tokens times
        its loss weight, when there are weights)."""
        batch = collate(
            [e.input_ids for e in batch_examples], [e.loss_mask for e in batch_examples],
            self.pad_id, self.device,
        )
        logits = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
        mask = batch.loss_mask[:, 1:]
        if self.weights is None:
            return torch.nn.functional.cross_entropy(
                logits[:, :-1][mask].float(), batch.input_ids[:, 1:][mask], reduction="sum"
            )
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1][mask].float(), batch.input_ids[:, 1:][mask], reduction="none"
        )
        w = torch.tensor([self.weights[e.id] for e in batch_examples], device=ce.device)
        return (ce * w[:, None].expand_as(mask)[mask]).sum()

    def epoch(self, epoch: int, bar) -> tuple[float, float, float]:
        """Train one epoch; returns (mean lr of its steps, lr at its end, mean loss)."""
        cfg = self.cfg
        order = _epoch_order(len(self.examples), cfg.seed, epoch)
        batches = [
            [self.examples[i] for i in order[s : s + cfg.batch_size]]
            for s in range(0, len(order), cfg.batch_size)
        ]
        self.model.train()
        lrs, loss_sum, tok_sum = [], 0.0, 0
        for s in range(0, len(batches), cfg.grad_accum):
            group = batches[s : s + cfg.grad_accum]
            tokens = sum(int(e.loss_mask[1:].sum()) for b in group for e in b)
            for b in group:
                ce = self._loss(b)
                (ce / tokens).backward()
                loss_sum += float(ce.detach())
            tok_sum += tokens
            if not math.isfinite(loss_sum):
                raise GradstoreError(
                    f"the warm-up loss became {loss_sum} at step {self.step + 1}; lower --lr "
                    "or use --dtype float32"
                )
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            lr = self.lr_at(self.step)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            lrs.append(lr)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / max(1, tok_sum):.4f}",
                            lr=f"{lr:.2e}")
        self.model.eval()
        return float(np.mean(lrs)), self.lr_at(self.step), loss_sum / max(1, tok_sum)

    def save(self, out: Path, epoch: int, lr: float, lr_end: float, loss: float,
             settings: dict) -> Path:
        final = out / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = out / f".tmp-{CHECKPOINT_PREFIX}{self.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"cpu_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        torch.save(state, tmp / _TORCH_STATE)
        info = {
            "lr": lr, "lr_at_end": lr_end, "epoch": epoch + 1, "global_step": self.step,
            "mean_loss": loss, "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
            "settings": settings,
        }
        (tmp / CHECKPOINT_INFO).write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final


def _summary_of(path: Path) -> CheckpointSummary:
    info = json.loads((path / CHECKPOINT_INFO).read_text())
    return CheckpointSummary(
        str(path), int(info["epoch"]), int(info["global_step"]), float(info["lr"]),
        float(info["lr_at_end"]), float(info["mean_loss"]),
    )


KEEP_EVERY_EPOCH, KEEP_LAST = "every-epoch", "last"
"""What :func:`warmup` saves: a checkpoint after every epoch (the trajectory that ingestion
reads, and a run that resumes where it stopped), or only the final one (a plain fine-tune,
``gradstore.ops.evaluate.finetune``: the same weights, without writing an adapter and its
optimizer state once per epoch; an interrupted run starts again)."""


def warmup(cfg: WarmupConfig | None = None, /, *, keep: str = KEEP_EVERY_EPOCH,
           **options: Any) -> WarmupSummary:
    """Run (or resume, or recognise as finished) a LoRA warm-up; see the module docstring.
    ``keep``: :data:`KEEP_EVERY_EPOCH` or :data:`KEEP_LAST`."""
    if keep not in (KEEP_EVERY_EPOCH, KEEP_LAST):
        raise GradstoreError(f"keep={keep!r} is not {KEEP_EVERY_EPOCH!r} or {KEEP_LAST!r}")
    if cfg is None:
        cfg = WarmupConfig.from_options(**options)
    elif options:
        raise GradstoreError("pass either a WarmupConfig or keyword options, not both")
    cfg.validate()
    started = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise GradstoreError(f"--out {cfg.out!r} is a file; give a directory for checkpoints")
    records = read_records(cfg.data, cfg.split, cfg.encoding)
    train = cfg.train
    subset = choose_subset(records, train)
    tokenizer = load_tokenizer(cfg.lm.model, cfg.lm.gguf_file)
    report = tokenize_records(subset, tokenizer, train.max_length, progress=cfg.progress)
    if not report.examples:
        raise GradstoreError(
            f"none of the {len(subset)} warm-up examples has a response token to train on "
            f"({', '.join(report.skipped)}); check the data format or raise --max-length"
        )
    weights = loss_weights(subset, report.examples, train.weight_field)
    settings = _run_settings(cfg, report.examples, weights, keep)
    done = _prepare_out(out, settings, cfg.overwrite)
    if len(done) >= train.epochs or (keep == KEEP_LAST and done):  # (its final one alone)
        cks = [_summary_of(p) for _, p in done[: train.epochs]]
        return WarmupSummary(str(out), cks, len(report.examples), report.skipped, cks[-1].step,
                             train.epochs, time.perf_counter() - started, "already complete")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = Trainer(cfg.lm, train, report.examples, pad_id, weights, cfg.progress)
    if done:
        trainer.restore(done[-1][1])
    else:
        torch.manual_seed(train.seed)  # LoRA dropout
    start_epoch = len(done)
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="warm-up", unit="step",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, train.epochs):
            lr, lr_end, loss = trainer.epoch(epoch, bar)
            if keep == KEEP_EVERY_EPOCH or epoch == train.epochs - 1:
                trainer.save(out, epoch, lr, lr_end, loss, settings)
    finally:
        bar.close()
    if train.gradient_checkpointing:
        trainer.model.get_base_model().gradient_checkpointing_disable()
    release_model(trainer.model)
    _write_run_info(out, settings, "complete")
    cks = [_summary_of(p) for _, p in _completed(out)]
    return WarmupSummary(str(out), cks, len(report.examples), report.skipped, trainer.step,
                         start_epoch, time.perf_counter() - started)


def _run_settings(cfg: WarmupConfig, examples: list[TokenizedExample],
                  weights: dict[str, float] | None, keep: str) -> dict:
    """What identifies a run: its training settings, examples and loss weights, and (for a
    run that keeps its last checkpoint only) that, so a folder of the other kind is refused
    as another run's."""
    settings = training_settings(cfg) | {
        "examples": [e.id for e in examples],
        "data_fingerprint": data_fingerprint(examples),
    }
    if weights is not None:
        settings["loss_weights"] = [round(weights[e.id], 9) for e in examples]
    if keep == KEEP_LAST:
        settings["keep"] = KEEP_LAST
    return settings


def _prepare_out(out: Path, settings: dict, overwrite: bool) -> list[tuple[int, Path]]:
    """Checkpoints already written by the same run; refuses a directory from another run."""
    info_file = out / RUN_INFO
    if info_file.exists():
        old = json.loads(info_file.read_text()).get("settings", {})
        if old != settings and not overwrite:
            key = next((k for k in sorted(set(old) | set(settings))
                        if old.get(k) != settings.get(k)), "?")
            raise GradstoreError(
                f"{str(out)!r} holds a warm-up run with other settings ({key}: "
                f"{_short(old.get(key))} there, {_short(settings.get(key))} now); use another "
                "--out or --overwrite to replace it"
            )
        if old != settings:  # --overwrite
            for _, p in _completed(out):
                shutil.rmtree(p)
    elif out.exists() and any(out.glob(f"{CHECKPOINT_PREFIX}*")) and not overwrite:
        raise GradstoreError(
            f"{str(out)!r} already holds checkpoints that gradstore did not write; use another "
            "--out or --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if overwrite and not info_file.exists():
        for p in out.glob(f"{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    _write_run_info(out, settings, "running")
    return _completed(out)


def _write_run_info(out: Path, settings: dict, status: str) -> None:
    tmp = out / f".{RUN_INFO}.tmp"
    tmp.write_text(json.dumps({"status": status, "settings": settings}, indent=1) + "\n")
    os.replace(tmp, out / RUN_INFO)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) < 60 else text[:57] + "..."
