"""A checkpoint's saved Adam state and learning rate, mapped onto the flat LoRA gradient.

Hugging Face's Trainer saves ``optimizer.state_dict()`` as ``optimizer.pt``
(``optimizer.bin`` when accelerate saves it; under FSDP, as in LESS's warm-up, that
state is keyed by parameter name and is matched by name). A plain state is keyed by
position, not name: the Trainer puts the parameters that get weight decay first and the others
(biases, norms) second, each in ``named_parameters`` order. That order is rebuilt
here and checked shape by shape; a state that records ``param_names`` is matched
by name instead. Any mismatch stops with an error rather than pairing a gradient
with another parameter's moments.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gradstore.errors import GradstoreError
from gradstore.grads.per_example import ParamSlot

OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
CHECKPOINT_INFO = "gradstore_checkpoint.json"  # written by `gradstore warmup`
_WRAPPER_SEGMENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"}
_NO_DECAY = re.compile(r"norm", re.IGNORECASE)  # owning module name of a no-decay weight


@dataclass
class AdamMoments:
    """Adam's first and second moments for every LoRA weight, flattened like the gradient."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    beta1: float
    beta2: float
    eps: float

    def to(self, device: torch.device) -> AdamMoments:
        return AdamMoments(
            self.exp_avg.to(device), self.exp_avg_sq.to(device), self.beta1, self.beta2, self.eps
        )


def optimizer_file(path: Path) -> Path | None:
    for name in OPTIMIZER_FILES:
        if (path / name).exists():
            return path / name
    return None


def _normal_name(name: str) -> str:
    """A parameter name without wrapper segments (FSDP, activation checkpointing) or the
    peft prefix and adapter name, so names saved by other setups match the model's."""
    name = ".".join(p for p in name.split(".") if p not in _WRAPPER_SEGMENTS)
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.(default)(?=\.weight$|\.bias$)", "", name)


def decays(name: str) -> bool:
    """Whether the Trainer applies weight decay to parameter ``name`` (not biases, norms)."""
    module, _, leaf = name.rpartition(".")
    return leaf != "bias" and not _NO_DECAY.search(module)


def trainer_order(slots: list[ParamSlot]) -> list[ParamSlot]:
    """The Trainer's parameter order: weight-decayed parameters first, then the rest."""
    return [s for s in slots if decays(s.name)] + [s for s in slots if not decays(s.name)]


def load_adam_moments(path: Path, slots: list[ParamSlot]) -> AdamMoments:
    """Read the Adam moments saved in checkpoint ``path`` in the order of ``slots``."""
    file, state = _read_state(path)
    groups = state["param_groups"]
    betas = {tuple(g.get("betas", ())) for g in groups}
    epss = {g.get("eps") for g in groups}
    if len(betas) != 1 or len(epss) != 1 or () in betas or None in epss:
        raise GradstoreError(
            f"{str(file)!r} does not hold one Adam configuration (betas {betas}, eps {epss}); "
            "use --grad-type sgd"
        )
    (beta1, beta2), eps = betas.pop(), epss.pop()
    index_order = [i for g in groups for i in g["params"]]
    ordered = _slots_in_state_order(file, groups, index_order, slots)
    total = sum(s.numel for s in slots)
    m = torch.empty(total, dtype=torch.float32)
    v = torch.empty(total, dtype=torch.float32)
    for idx, slot in zip(index_order, ordered, strict=True):
        entry = state["state"].get(idx)
        if entry is None or "exp_avg" not in entry or "exp_avg_sq" not in entry:
            raise GradstoreError(
                f"optimizer state {str(file)!r} has no Adam moments for parameter #{idx} "
                f"({slot.name}); use --grad-type sgd"
            )
        for src, dst in ((entry["exp_avg"], m), (entry["exp_avg_sq"], v)):
            if tuple(src.shape) != slot.shape:
                raise GradstoreError(
                    f"optimizer state {str(file)!r}: parameter #{idx} has shape "
                    f"{tuple(src.shape)} but {slot.name} has {slot.shape}; the state does not "
                    "belong to this adapter"
                )
            dst[slot.offset : slot.offset + slot.numel] = src.reshape(-1).float()
    return AdamMoments(m, v, float(beta1), float(beta2), float(eps))


def _read_state(path: Path) -> tuple[Path, dict]:
    """The checkpoint's optimizer file and its state_dict, or one clear error."""
    file = optimizer_file(path)
    if file is None:
        raise GradstoreError(
            f"checkpoint {str(path)!r} has no optimizer state ({' or '.join(OPTIMIZER_FILES)}); "
            "use --grad-type sgd or sign, or a checkpoint saved with its optimizer"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise GradstoreError(f"cannot read optimizer state {str(file)!r}: {exc}") from exc
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        raise GradstoreError(f"{str(file)!r} is not a torch optimizer state_dict")
    return file, state


def _slots_in_state_order(file: Path, groups: list, index_order: list,
                          slots: list[ParamSlot]) -> list[ParamSlot]:
    """The model's parameter slots in the order the state lists them: by the names it
    records (torch's param_names, or FSDP's name keys as LESS saves them), else in the
    order a Trainer registers them."""
    names = [n for g in groups for n in (g.get("param_names") or [])]
    if index_order and all(isinstance(i, str) for i in index_order):
        names = index_order  # FSDP's optim_state_dict (LESS's optimizer.bin): keyed by name
    if len(index_order) != len(slots):
        raise GradstoreError(
            f"optimizer state {str(file)!r} covers {len(index_order)} parameters but the model "
            f"has {len(slots)} trainable LoRA parameters; was it saved for this adapter?"
        )
    if not (names and len(names) == len(index_order)):
        return trainer_order(slots)
    by_name = {_normal_name(s.name): s for s in slots}
    missing = [n for n in names if _normal_name(n) not in by_name]
    if missing:
        raise GradstoreError(
            f"optimizer state {str(file)!r} names parameters the model lacks: {missing[:3]}"
        )
    return [by_name[_normal_name(n)] for n in names]


def _global_step(path: Path) -> int | None:
    ts = path / "trainer_state.json"
    if ts.exists():
        try:
            return int(json.loads(ts.read_text()).get("global_step"))
        except (ValueError, TypeError, json.JSONDecodeError):
            return None
    return None


def checkpoint_lr(path: Path) -> float | None:
    """The learning rate that weighs this checkpoint (LESS: the epoch's mean lr).

    From ``gradstore_checkpoint.json`` when present; else the mean logged
    learning rate since the previous sibling checkpoint in ``trainer_state.json``;
    else the optimizer's current lr; else None (equal weights).
    """
    info = path / CHECKPOINT_INFO
    if info.exists():
        lr = json.loads(info.read_text()).get("lr")
        return None if lr is None else float(lr)
    step = _global_step(path)
    if step is not None:
        log = json.loads((path / "trainer_state.json").read_text()).get("log_history", [])
        siblings = [_global_step(p) for p in path.parent.iterdir() if p.is_dir() and p != path]
        prev = max([s for s in siblings if s is not None and s < step], default=0)
        lrs = [
            float(e["learning_rate"]) for e in log
            if "learning_rate" in e and prev < int(e.get("step", 0)) <= step
        ]
        if lrs:
            return sum(lrs) / len(lrs)
    file = optimizer_file(path)
    if file is not None:
        try:
            groups = torch.load(file, map_location="cpu", weights_only=True)["param_groups"]
            return float(groups[0]["lr"])
        except Exception:  # noqa: BLE001 - no usable lr: equal weights
            return None
    return None
