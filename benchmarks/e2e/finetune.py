"""LoRA fine-tuning for the benchmark, with gradstore's own trainer (``gradstore.warmup``).

Every selection is trained with the same hyper-parameters and the same number of
example passes (``passes``): a selection of n examples runs
``max(1, round(passes / n))`` epochs, so small budgets are not starved of
steps and the comparison is about *which* examples, not how much training.
Inside ``gradstore.grads.model.shared_models()`` the base model is loaded once
for every run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from gradstore.config import WarmupConfig
from gradstore.devices import resolve_device
from gradstore.grads.model import load_model, release_model, resolve_dtype
from gradstore.grads.warmup import warmup


@dataclass(frozen=True)
class TrainSettings:
    passes: int = 160
    """Example passes per fine-tune (epochs = passes / selection size, at least 1)."""
    lr: float = 1e-3
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 32
    lora_layers: str | None = "top:8"
    max_length: int = 128
    warmup_ratio: float = 0.03

    def epochs_for(self, n: int) -> int:
        return max(1, round(self.passes / n))


def finetune(model: str, gguf_file: str | None, data: Path, out: Path, settings: TrainSettings,
             n: int, seed: int, device: str = "cpu", epochs: int | None = None,
             weight_field: str | None = None) -> Path:
    """Train LoRA on every example of ``data`` (n of them); returns the final checkpoint.

    ``weight_field`` names the rows' loss-weight field (an export's ``weight``).

    Always from scratch: a job interrupted before its result was written is redone
    (only its last checkpoint is kept, which a resumed warm-up could not continue from).
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
    summary = warmup(cfg)
    last = Path(summary.checkpoints[-1].path)
    for ck in summary.checkpoints[:-1]:  # only the final adapter is evaluated
        shutil.rmtree(ck.path, ignore_errors=True)
    return last


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
