"""Per-example gradients of a causal LM's loss with respect to its LoRA parameters.

For a whole padded batch at once: forward hooks on every ``lora_A`` / ``lora_B``
linear layer keep the layer's input, and a hook on its output receives the
gradient flowing back. The weight gradient of example ``b`` is then
``sum_t grad_out[b, t] (x) input[b, t]`` — one einsum per layer, written straight
into row ``b`` of a preallocated (B, P) buffer. The batch objective is the sum
of the per-example mean losses, so each row is exactly that example's own
gradient (examples never interact: right padding, causal attention, pad
positions masked out of the loss).

``projected`` does the same pass for a factored projection: each layer's hook adds
``sum_t (L g_t)(R x_t)^T`` (padded tokens masked out) to that layer's block of a
(B, dim) buffer, so the (B, P) gradients are never formed.

Adapters with other trainable parameters (DoRA magnitudes, LoRA biases,
``modules_to_save``) fall back to one backward per example.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gradstore.errors import GradstoreError
from gradstore.grads.factored_projection import FactoredProjector


@dataclass(frozen=True)
class ParamSlot:
    """Where one trainable parameter sits in the flat gradient vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Batch:
    """A right-padded batch: token ids, attention mask and loss mask, each (B, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def collate(
    sequences: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray], pad_id: int,
    device: torch.device | str = "cpu",
) -> Batch:
    """Pad token ids and loss masks on the right into one :class:`Batch`."""
    n, width = len(sequences), max(len(s) for s in sequences)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    att = np.zeros((n, width), dtype=np.int64)
    lm = np.zeros((n, width), dtype=bool)
    for i, (s, m) in enumerate(zip(sequences, loss_masks, strict=True)):
        ids[i, : len(s)] = s
        att[i, : len(s)] = 1
        lm[i, : len(s)] = m
    return Batch(
        torch.from_numpy(ids).to(device),
        torch.from_numpy(att).to(device),
        torch.from_numpy(lm).to(device),
    )


def example_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's loss tokens, shape (B,)."""
    target = batch.input_ids[:, 1:]
    mask = batch.loss_mask[:, 1:].to(torch.float32)
    logp = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target, reduction="none"
    )
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise GradstoreError("an example in the batch has no loss tokens; it must be skipped")
    return (logp * mask).sum(1) / counts


def trainable_slots(model: nn.Module) -> list[ParamSlot]:
    """The trainable parameters in ``named_parameters`` order, with flat offsets."""
    slots, offset = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            slots.append(ParamSlot(name, tuple(p.shape), offset))
            offset += p.numel()
    if not slots:
        raise GradstoreError("the model has no trainable (LoRA) parameters")
    return slots


def _lora_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Trainable weight name -> the ``nn.Linear`` owning it, for lora_A / lora_B layers."""
    out = {}
    for mname, module in model.named_modules():
        leaf = mname.split(".")
        if len(leaf) >= 2 and leaf[-2] in ("lora_A", "lora_B") and type(module) is nn.Linear:
            if module.weight.requires_grad and module.bias is None:
                out[f"{mname}.weight"] = module
    return out


class PerExampleGradients:
    """Computes (B, P) per-example gradients and (B,) losses for a batch.

    Parameters
    ----------
    model : a peft model whose only trainable parameters are LoRA weights.
    strategy : "hooks" (batched), "loop" (one backward per example) or "auto".
    """

    def __init__(self, model: nn.Module, strategy: str = "auto") -> None:
        if strategy not in ("auto", "hooks", "loop"):
            raise GradstoreError(f"strategy {strategy!r} is not one of auto, hooks, loop")
        self.model = model
        self.slots = trainable_slots(model)
        self.num_params = sum(s.numel for s in self.slots)
        linears = _lora_linears(model)
        hookable = all(s.name in linears for s in self.slots)
        if strategy == "auto":
            strategy = "hooks" if hookable else "loop"
            if not hookable:
                odd = [s.name for s in self.slots if s.name not in linears][:3]
                warnings.warn(
                    f"trainable parameters other than plain LoRA weights ({odd}); "
                    "computing per-example gradients one example at a time (slower)",
                    stacklevel=2,
                )
        elif strategy == "hooks" and not hookable:
            raise GradstoreError("batched per-example gradients need plain LoRA adapters")
        self.strategy = strategy
        self._layers = [(linears[s.name], s) for s in self.slots] if strategy == "hooks" else []
        self._params = [p for _, p in model.named_parameters() if p.requires_grad]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The trainable parameters' shapes, in the flat gradient's order."""
        return [s.shape for s in self.slots]

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.strategy == "loop":
            return self._loop(batch)
        return self._hooked(batch)

    def _forward(self, batch: Batch) -> torch.Tensor:
        out = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        )
        return example_losses(out.logits, batch)

    def projected(
        self, batch: Batch, projector: FactoredProjector
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim) factored projections of the per-example gradients and (B,) losses,
        each module's block computed in its hook from the tokens (the (B, P) gradients are
        never formed); padded tokens (attention mask 0) add nothing."""
        if self.strategy != "hooks":
            raise GradstoreError(
                "projecting per-example gradients in the hooks needs plain LoRA adapters "
                "(strategy hooks); project the formed gradients instead"
            )
        if [(b.rows, b.cols) for b in projector.blocks] != [s.shape for s in self.slots]:
            raise GradstoreError(
                f"the factored projection ({projector.spec.layout}) was built for other "
                f"modules than this model's {len(self.slots)}; build it from its parameters"
            )
        out = torch.zeros(batch.size, projector.spec.dim, dtype=torch.float32,
                          device=batch.input_ids.device)

        def add_block(index: int, slot: ParamSlot, gout: torch.Tensor, x: torch.Tensor) -> None:
            if x.ndim != 3 or tuple(x.shape[:2]) != tuple(batch.attention_mask.shape):
                raise GradstoreError(
                    f"layer {slot.name} saw inputs of shape {tuple(x.shape)}, not (batch, "
                    f"tokens, features) {tuple(batch.attention_mask.shape)}; use --projection "
                    "rademacher for this model"
                )
            b = projector.blocks[index]
            block = projector.project_tokens(index, gout, x, batch.attention_mask)
            out[:, b.offset : b.offset + b.dim].add_(block)

        return out, self._hooked_pass(batch, add_block)

    def _hooked(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        B = batch.size
        grads = torch.zeros(B, self.num_params, dtype=torch.float32,
                            device=batch.input_ids.device)

        def add_gradient(_index: int, slot: ParamSlot, gout: torch.Tensor,
                         x: torch.Tensor) -> None:
            dest = grads[:, slot.offset : slot.offset + slot.numel].view(B, *slot.shape)
            dest.add_(torch.bmm(gout.float().transpose(1, 2), x.float()))

        return grads, self._hooked_pass(batch, add_gradient)

    def _hooked_pass(self, batch: Batch, consume) -> torch.Tensor:
        """One forward and backward with hooks on every LoRA layer: ``consume(index, slot,
        grad_out, inputs)`` receives each use of layer ``index`` (added, not copied, by the
        consumers: a layer applied twice in one forward gets both terms). Returns the losses."""
        handles = []

        def attach(index: int, layer: nn.Linear, slot: ParamSlot):
            def forward_hook(_mod, inputs, output):
                if not output.requires_grad:  # e.g. a no-grad recomputation
                    return
                x = inputs[0]
                output.register_hook(lambda gout: consume(index, slot, gout, x))

            return layer.register_forward_hook(forward_hook)

        try:
            for index, (layer, slot) in enumerate(self._layers):
                handles.append(attach(index, layer, slot))
            losses = self._forward(batch)
            # the hooks consume the gradients; parameter .grad is neither needed nor kept
            torch.autograd.grad(losses.sum(), self._params, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        return losses.detach().float()

    def _loop(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        B = batch.size
        grads = torch.empty(B, self.num_params, dtype=torch.float32, device=batch.input_ids.device)
        losses = torch.empty(B, dtype=torch.float32)
        lengths = batch.attention_mask.sum(1).tolist()
        for b in range(B):
            n = int(lengths[b])
            one = Batch(
                batch.input_ids[b : b + 1, :n],
                batch.attention_mask[b : b + 1, :n],
                batch.loss_mask[b : b + 1, :n],
            )
            loss = self._forward(one)[0]
            gs = torch.autograd.grad(loss, self._params, allow_unused=True)
            for g, slot in zip(gs, self.slots, strict=True):
                dest = grads[b, slot.offset : slot.offset + slot.numel]
                if g is None:
                    dest.zero_()
                else:
                    dest.copy_(g.reshape(-1))
            losses[b] = loss.detach().float()
        return grads, losses
