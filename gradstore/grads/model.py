"""Loading a causal LM (Hugging Face id, local directory or GGUF file) and its LoRA adapters."""

from __future__ import annotations

import hashlib
import json
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradstore.errors import GradstoreError

# peft reads a deprecated transformers attribute on every get_peft_model: noise to our users
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


_shared: dict[str, dict] | None = None  # tokenizers and free base models, inside shared_models()
_model_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> load key


@contextmanager
def shared_models() -> Iterator[None]:
    """Load each tokenizer and base model once for the steps run inside this block.

    `gradstore run` trains, then ingests a pool and targets with the same model: each
    step takes the base model (``load_model``), wraps it in LoRA and gives it back
    unwrapped (``release_model``), so the next step skips loading it again. Outside
    the block every call loads afresh.
    """
    global _shared
    outer = _shared
    if outer is None:
        _shared = {"tokenizers": {}, "models": {}}
    try:
        yield
    finally:
        if outer is None:
            _shared = None


def release_model(model: nn.Module) -> None:
    """Give a base model (or a peft model around one) back for reuse inside ``shared_models``."""
    if _shared is None:
        return
    base = model.unload() if hasattr(model, "unload") else model  # peft: LoRA layers removed
    key = _model_keys.get(base)
    if key is None:
        return
    for p in base.parameters():
        p.requires_grad_(False)
    _shared["models"][key] = base.eval()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise GradstoreError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def model_identity(model: str, gguf_file: str | None) -> str:
    """A stable name for the base model, recorded with every table.

    A hub id stays as given; for a local directory only its last component is
    kept (the same model under two paths must still match).
    """
    path = Path(model)
    name = path.name if path.exists() else model
    if gguf_file:
        name = f"{name}/{Path(gguf_file).name}"
    return name


def _load_kwargs(model: str, gguf_file: str | None) -> dict[str, Any]:
    if not gguf_file:
        return {}
    if Path(model).is_dir() and not (Path(model) / gguf_file).exists():
        raise GradstoreError(
            f"GGUF file {gguf_file!r} is not in {model!r}; --gguf-file names a file inside "
            "the --model directory"
        )
    return {"gguf_file": gguf_file}


def load_tokenizer(model: str, gguf_file: str | None = None):
    """The model's tokenizer, with a pad token (eos when it has none)."""
    if _shared is not None and (model, gguf_file) in _shared["tokenizers"]:
        return _shared["tokenizers"][(model, gguf_file)]
    tok = _load_tokenizer(model, gguf_file)
    if _shared is not None:
        _shared["tokenizers"][(model, gguf_file)] = tok
    return tok


def _load_tokenizer(model: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model, **_load_kwargs(model, gguf_file))
    except (OSError, ValueError) as exc:
        raise GradstoreError(
            f"cannot load a tokenizer from {model!r}: {str(exc).splitlines()[0]}; "
            "give a Hugging Face id or a local model directory (plus --gguf-file for GGUF)"
        ) from exc
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model: str, gguf_file: str | None, dtype: torch.dtype, device: torch.device,
    progress: bool = True,
):
    """The base causal LM, frozen, in eval mode, on ``device``.

    ``progress=False`` also silences transformers' own loading bars (``--quiet``).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    key = (model, gguf_file, str(dtype), str(device))
    if _shared is not None and key in _shared["models"]:
        return _shared["models"].pop(key)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            model, dtype=dtype, **_load_kwargs(model, gguf_file)
        )
    except (OSError, ValueError) as exc:
        raise GradstoreError(
            f"cannot load a causal LM from {model!r}: {str(exc).splitlines()[0]}; "
            "give a Hugging Face id or a local model directory (plus --gguf-file for GGUF)"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    lm.config.use_cache = False
    for p in lm.parameters():
        p.requires_grad_(False)
    _model_keys[lm] = key
    return lm.to(device).eval()


@dataclass(frozen=True)
class LoraSpec:
    """A fresh LoRA adapter: rank, alpha, target modules and the seed of its init."""

    r: int = 8
    alpha: int = 32
    targets: tuple[str, ...] | None = None
    seed: int = 0


def pick_lora_targets(lm: nn.Module, targets: tuple[str, ...] | None) -> list[str] | str:
    """The modules to adapt: as given, else q/k/v/o projections when present, else all linear."""
    if targets:
        if list(targets) == ["all-linear"]:
            return "all-linear"
        return list(targets)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    if set(DEFAULT_LORA_TARGETS) <= leaves:
        return list(DEFAULT_LORA_TARGETS)
    return "all-linear"


def fresh_lora(lm: nn.Module, spec: LoraSpec):
    """Wrap ``lm`` with a new LoRA adapter, initialised from ``spec.seed``.

    The seed matters: pool and target tables ingested in separate runs must see
    the same adapter.
    """
    from peft import LoraConfig, get_peft_model

    if spec.r < 1 or spec.alpha <= 0:
        raise GradstoreError(f"LoRA rank {spec.r} / alpha {spec.alpha} must be positive")
    cfg = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0,
        target_modules=pick_lora_targets(lm, spec.targets), bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            model = get_peft_model(lm, cfg)
        except ValueError as exc:
            raise GradstoreError(
                f"LoRA targets {spec.targets} do not fit this model: {exc}; "
                "pass module names that exist, e.g. --lora-targets q_proj,v_proj"
            ) from exc
    return model.eval()


@dataclass
class CheckpointWeights:
    """One checkpoint of the gradient trajectory: adapter weights, lr, optimizer state."""

    name: str
    path: Path | None
    weights: dict[str, torch.Tensor]
    lr: float | None = None
    fingerprint: str = ""
    extra: dict = field(default_factory=dict)


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def adapter_config(path: Path) -> dict:
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise GradstoreError(
            f"checkpoint {str(path)!r} has no adapter_config.json; give a peft adapter "
            "directory (as written by `gradstore warmup` or a LESS warm-up)"
        )
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise GradstoreError(f"{cfg_file} is not valid JSON ({exc})") from exc


def lora_from_checkpoints(lm: nn.Module, paths: list[Path]):
    """Wrap ``lm`` with the LoRA structure of the first checkpoint; check all agree."""
    from peft import LoraConfig, get_peft_model

    cfgs = [adapter_config(p) for p in paths]
    keys = (
        "r", "lora_alpha", "target_modules", "peft_type", "use_dora", "bias",
        "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
    )
    first = {k: cfgs[0].get(k) for k in keys}
    for p, c in zip(paths[1:], cfgs[1:], strict=True):
        other = {k: c.get(k) for k in keys}
        if other != first:
            raise GradstoreError(
                f"checkpoint {str(p)!r} has adapter config {other}, but {str(paths[0])!r} has "
                f"{first}; all checkpoints must come from one warm-up run"
            )
    if (first.get("peft_type") or "LORA") != "LORA":
        raise GradstoreError(f"checkpoint {str(paths[0])!r} is not a LoRA adapter")
    targets = first["target_modules"]
    cfg = LoraConfig(
        r=first["r"], lora_alpha=first["lora_alpha"], lora_dropout=0.0,
        target_modules=sorted(targets) if isinstance(targets, list) else targets,
        bias=first.get("bias") or "none", use_dora=bool(first.get("use_dora")),
        modules_to_save=cfgs[0].get("modules_to_save"),
        layers_to_transform=first.get("layers_to_transform"),
        layers_pattern=first.get("layers_pattern"),
        rank_pattern=first.get("rank_pattern") or {},
        alpha_pattern=first.get("alpha_pattern") or {},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            model = get_peft_model(lm, cfg)
        except ValueError as exc:
            raise GradstoreError(
                f"checkpoint {str(paths[0])!r} does not fit this model ({exc}); "
                "was it trained on another base model?"
            ) from exc
    return model.eval()


def load_adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    from peft.utils import load_peft_weights

    try:
        return load_peft_weights(str(path), device="cpu")
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise GradstoreError(
            f"cannot read adapter weights in {str(path)!r} ({str(exc).splitlines()[0]}); "
            "expected adapter_model.safetensors or adapter_model.bin"
        ) from exc


def activate(model: nn.Module, ckpt: CheckpointWeights) -> None:
    """Load one checkpoint's adapter weights into the (shared) LoRA modules."""
    from peft import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(model, ckpt.weights)
    except RuntimeError as exc:  # size mismatches
        raise GradstoreError(
            f"adapter weights of checkpoint {ckpt.name!r} do not fit the model "
            f"({str(exc).splitlines()[0]} ...); was it trained on this base model?"
        ) from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [
        k for k in (getattr(result, "missing_keys", []) or [])
        if "lora_" in k or "modules_to_save" in k
    ]
    if unexpected or missing:
        raise GradstoreError(
            f"adapter weights of checkpoint {ckpt.name!r} do not fit the model: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}); was it trained on this base model?"
        )
