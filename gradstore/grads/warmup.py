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
    resolve_device,
    resolve_dtype,
)
from gradstore.grads.optimizer_state import CHECKPOINT_INFO, decays
from gradstore.grads.per_example import collate

RUN_INFO = "gradstore_warmup.json"
CHECKPOINT_PREFIX = "checkpoint-"
_TORCH_STATE = "training_state.pt"


@dataclass(frozen=True)
class WarmupConfig:
    """One `gradstore warmup` run. Every field maps to a command-line flag."""

    model: str
    """Hugging Face id or local model directory."""
    data: str
    """The pool: .jsonl, .json, .parquet or a datasets directory (any ingest format)."""
    out: str
    """Directory for the checkpoints (created; resumed if an earlier run stopped)."""
    gguf_file: str | None = None
    split: str | None = None
    fraction: float = 0.05
    """Share of the pool trained on, drawn at random with ``seed``."""
    num_examples: int | None = None
    """Train on exactly this many pool examples instead of ``fraction``."""
    epochs: int = 4
    """Epochs; one checkpoint is saved after each."""
    lr: float = 2e-5
    """Peak learning rate (LESS's warm-up uses 2e-5)."""
    warmup_ratio: float = 0.03
    """Share of the optimizer steps with a linearly rising learning rate."""
    weight_decay: float = 0.0
    batch_size: int = 8
    """Examples per forward pass."""
    grad_accum: int = 1
    """Forward passes per optimizer step (effective batch = batch_size x grad_accum)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: none)."""
    max_length: int = 2048
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    """Module names (default q/k/v/o projections when present, else all linear layers)."""
    lora_layers: str | None = None
    """Only these transformer layers: ``top:N`` or a comma list of indices."""
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for long sequences."""
    weight_field: str | None = None
    """A field of the rows holding a loss weight (e.g. an export's ``weight``): each example's
    loss counts in proportion to it (weights are scaled to mean 1; none: all equal)."""
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not 0 < self.fraction <= 1:
            raise GradstoreError(f"--fraction {self.fraction} must be in (0, 1], e.g. 0.05")
        checks = {
            "--epochs": self.epochs, "--batch-size": self.batch_size,
            "--grad-accum": self.grad_accum, "--lora-r": self.lora_r,
            "--max-length": self.max_length,
        }
        for flag, value in checks.items():
            if value < 1:
                raise GradstoreError(f"{flag} {value} must be a positive integer")
        if self.num_examples is not None and self.num_examples < 1:
            raise GradstoreError(f"--num-examples {self.num_examples} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GradstoreError(f"--lr {self.lr} must be a positive number, e.g. 2e-5")
        if not 0 <= self.warmup_ratio < 1:
            raise GradstoreError(f"--warmup-ratio {self.warmup_ratio} must be in [0, 1)")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.lora_alpha <= 0:
            raise GradstoreError(
                "--weight-decay and --max-grad-norm must be >= 0 and --lora-alpha > 0"
            )
        if not 0 <= self.lora_dropout < 1:
            raise GradstoreError(f"--lora-dropout {self.lora_dropout} must be in [0, 1)")
        if self.lora_layers is not None:
            _parse_layers(self.lora_layers, None)
        if not Path(self.data).exists():
            raise GradstoreError(f"data {self.data!r} does not exist; give the pool's data file")

    def training_settings(self) -> dict[str, Any]:
        """What decides the weights: a rerun into the same directory must match these."""
        d = asdict(self)
        for k in ("out", "device", "overwrite", "progress", "data", "gradient_checkpointing"):
            d.pop(k)
        d["model"] = model_identity(self.model, self.gguf_file)
        d["lora_targets"] = list(self.lora_targets) if self.lora_targets else None
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


def _parse_layers(spec: str, num_layers: int | None) -> list[int]:
    text = spec.strip().lower()
    try:
        if text.startswith("top:"):
            n = int(text[4:])
            if n < 1:
                raise ValueError
            if num_layers is None:
                return []
            if n > num_layers:
                raise GradstoreError(
                    f"--lora-layers {spec!r} asks for {n} layers but the model has {num_layers}"
                )
            return list(range(num_layers - n, num_layers))
        layers = sorted({int(t) for t in text.split(",") if t.strip()})
        if not layers or layers[0] < 0:
            raise ValueError
    except ValueError:
        raise GradstoreError(
            f"--lora-layers {spec!r} is not top:N or a comma list of layer indices (e.g. 10,11)"
        ) from None
    if num_layers is not None and layers[-1] >= num_layers:
        raise GradstoreError(
            f"--lora-layers {spec!r}: the model has layers 0..{num_layers - 1} only"
        )
    return layers


def choose_subset(records: list[Record], cfg: WarmupConfig) -> list[Record]:
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


class _Trainer:
    def __init__(self, cfg: WarmupConfig, examples: list[TokenizedExample], pad_id: int,
                 weights: dict[str, float] | None = None):
        from peft import LoraConfig, get_peft_model

        self.cfg, self.examples, self.pad_id = cfg, examples, pad_id
        self.weights = weights
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        lm = load_model(cfg.model, cfg.gguf_file, dtype, self.device, progress=cfg.progress)
        layers = None
        if cfg.lora_layers:
            layers = _parse_layers(cfg.lora_layers, getattr(lm.config, "num_hidden_layers", None))
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


def warmup(cfg: WarmupConfig | None = None, /, **options: Any) -> WarmupSummary:
    """Run (or resume, or recognise as finished) a LoRA warm-up; see the module docstring."""
    if cfg is None:
        if options.get("lora_targets") is not None:
            options["lora_targets"] = tuple(options["lora_targets"])
        try:
            cfg = WarmupConfig(**options)
        except TypeError as exc:
            raise GradstoreError(f"warmup options: {exc}") from exc
    elif options:
        raise GradstoreError("pass either a WarmupConfig or keyword options, not both")
    cfg.validate()
    started = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise GradstoreError(f"--out {cfg.out!r} is a file; give a directory for checkpoints")
    records = read_records(cfg.data, cfg.split)
    subset = choose_subset(records, cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file)
    report = tokenize_records(subset, tokenizer, cfg.max_length, progress=cfg.progress)
    if not report.examples:
        raise GradstoreError(
            f"none of the {len(subset)} warm-up examples has a response token to train on "
            f"({', '.join(report.skipped)}); check the data format or raise --max-length"
        )
    weights = loss_weights(subset, report.examples, cfg.weight_field)
    settings = cfg.training_settings() | {
        "examples": [e.id for e in report.examples],
        "data_fingerprint": data_fingerprint(report.examples),
    }
    if weights is not None:
        settings["loss_weights"] = [round(weights[e.id], 9) for e in report.examples]
    done = _prepare_out(out, settings, cfg.overwrite)
    if len(done) >= cfg.epochs:
        cks = [_summary_of(p) for _, p in done[: cfg.epochs]]
        return WarmupSummary(str(out), cks, len(report.examples), report.skipped, cks[-1].step,
                             cfg.epochs, time.perf_counter() - started, "already complete")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = _Trainer(cfg, report.examples, pad_id, weights)
    if done:
        trainer.restore(done[-1][1])
    else:
        torch.manual_seed(cfg.seed)  # LoRA dropout
    start_epoch = len(done)
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="warm-up", unit="step",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            lr, lr_end, loss = trainer.epoch(epoch, bar)
            trainer.save(out, epoch, lr, lr_end, loss, settings)
    finally:
        bar.close()
    if cfg.gradient_checkpointing:
        trainer.model.get_base_model().gradient_checkpointing_disable()
    release_model(trainer.model)
    _write_run_info(out, settings, "complete")
    cks = [_summary_of(p) for _, p in _completed(out)]
    return WarmupSummary(str(out), cks, len(report.examples), report.skipped, trainer.step,
                         start_epoch, time.perf_counter() - started)


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
