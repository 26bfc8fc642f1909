"""Per-example gradients of a causal LM's loss with respect to its LoRA parameters, or
(``full_layers``) to chosen parameters of a plain model (``--params``).

For a whole padded batch at once: forward hooks on every ``lora_A`` / ``lora_B``
linear layer (``full_layers``: every ``nn.Linear`` or GPT-2 ``Conv1D`` owning a trainable
weight or bias) keep the layer's input, and a hook on its output receives the
gradient flowing back. The weight gradient of example ``b`` is then
``sum_t grad_out[b, t] (x) input[b, t]`` (a bias's: ``sum_t grad_out[b, t]``; a ``Conv1D``
weight, stored (in, out), is the transpose), padded tokens masked out — one product per
layer, written straight into row ``b`` of a preallocated (B, P) buffer. The batch objective
is the sum of the per-example mean losses, so each row is exactly that example's own
gradient (examples never interact: right padding, causal attention, pad
positions masked out of the loss).

``projected`` does the same pass for a factored projection: each layer's hook adds
``sum_t (L g_t)(R x_t)^T`` (padded tokens masked out) to that layer's block of a
(B, dim) buffer, so the (B, P) gradients are never formed.

Adapters with other trainable parameters (DoRA magnitudes, LoRA biases,
``modules_to_save``), and full-layer parameters of other modules (embeddings, norms),
fall back to one backward per example.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gradstore.errors import GradstoreError
from gradstore.grads.factored_projection import FactoredProjector, matrix_shape


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
    return losses_at(logits[:, :-1], batch, torch.arange(logits.shape[1] - 1,
                                                         device=logits.device))


def loss_positions(batch: Batch) -> torch.Tensor:
    """Positions p whose logits predict a loss token (``loss_mask[:, p + 1]``) of any
    example in the batch, ascending."""
    return torch.nonzero(batch.loss_mask[:, 1:].any(0)).flatten()


def losses_at(logits: torch.Tensor, batch: Batch, keep: torch.Tensor) -> torch.Tensor:
    """:func:`example_losses` from the logits at positions ``keep`` only, (B, K, V): the
    same losses, every loss token being at a kept position."""
    target = batch.input_ids[:, keep + 1]
    mask = batch.loss_mask[:, keep + 1].to(torch.float32)
    logp = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), target,
                                             reduction="none")
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise GradstoreError("an example in the batch has no loss tokens; it must be skipped")
    return (logp * mask).sum(1) / counts


def _reads_the_head(model: nn.Module, params: list[torch.Tensor]) -> bool:
    """Whether a trainable parameter sits in the output head (its input is then wanted at
    every position, not only where logits are kept)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return True  # unknown: keep every position
    inside = {id(q) for q in head.parameters()}
    return any(id(q) in inside for q in params)


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


@dataclass(frozen=True)
class HookSite:
    """One module whose forward gives a trainable parameter's per-token gradient factors."""

    module: nn.Module
    part: str
    """``weight`` or ``bias``."""
    transposed: bool = False
    """The weight is stored (in, out), as GPT-2's ``Conv1D`` stores it."""

    def factors(self, grad_out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """(a, b), each (B, T, ·), whose ``sum_t a_t b_t^T`` is the parameter's gradient as
        its (rows, cols) matrix (``factored_projection.matrix_shape``)."""
        if self.part == "bias":
            return grad_out, grad_out.new_ones(*grad_out.shape[:-1], 1)
        return (x, grad_out) if self.transposed else (grad_out, x)


def _lora_sites(model: nn.Module) -> dict[str, list[HookSite]]:
    """Trainable weight name -> the ``nn.Linear`` owning it, for lora_A / lora_B layers."""
    out = {}
    for mname, module in model.named_modules():
        leaf = mname.split(".")
        if len(leaf) >= 2 and leaf[-2] in ("lora_A", "lora_B") and type(module) is nn.Linear:
            if module.weight.requires_grad and module.bias is None:
                out[f"{mname}.weight"] = [HookSite(module, "weight")]
    return out


def _full_layer_sites(model: nn.Module) -> dict[str, list[HookSite]]:
    """Trainable parameter name -> every module using it, for the parameters all of whose
    owners are ``nn.Linear`` or ``Conv1D`` layers (a tied weight is listed with each)."""
    from transformers.pytorch_utils import Conv1D

    owners: dict[int, list[HookSite | None]] = {}
    for module in model.modules():
        for part, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            kind = type(module)
            site = (HookSite(module, part, transposed=kind is Conv1D)
                    if kind in (nn.Linear, Conv1D) and part in ("weight", "bias") else None)
            owners.setdefault(id(p), []).append(site)
    return {
        name: owners[id(p)] for name, p in model.named_parameters()
        if p.requires_grad and None not in owners[id(p)]
    }


class PerExampleGradients:
    """Computes (B, P) per-example gradients and (B,) losses for a batch.

    Parameters
    ----------
    model : a peft model whose only trainable parameters are LoRA weights, or
        (``full_layers``) a plain model whose trainable parameters were chosen.
    strategy : "hooks" (batched), "loop" (one backward per example) or "auto".
    full_layers : hook every ``nn.Linear`` / ``Conv1D`` weight and bias that is trainable,
        not only LoRA's ``lora_A`` / ``lora_B`` weights.
    """

    def __init__(self, model: nn.Module, strategy: str = "auto", full_layers: bool = False
                 ) -> None:
        if strategy not in ("auto", "hooks", "loop"):
            raise GradstoreError(f"strategy {strategy!r} is not one of auto, hooks, loop")
        self.model = model
        self.keeps_logits: bool | None = None  # whether its forward takes logits_to_keep
        self.slots = trainable_slots(model)
        self.num_params = sum(s.numel for s in self.slots)
        sites = _full_layer_sites(model) if full_layers else _lora_sites(model)
        kinds = "nn.Linear / Conv1D weights and biases" if full_layers else "plain LoRA weights"
        odd = [s.name for s in self.slots if s.name not in sites]
        if strategy == "auto":
            strategy = "loop" if odd else "hooks"
            if odd:
                warnings.warn(
                    f"trainable parameters other than {kinds} ({odd[:3]}); "
                    "computing per-example gradients one example at a time (slower)",
                    stacklevel=2,
                )
        elif strategy == "hooks" and odd:
            raise GradstoreError(f"batched per-example gradients need {kinds}, not {odd[:3]}")
        self.strategy = strategy
        self._sites = [(index, site, slot) for index, slot in enumerate(self.slots)
                       for site in sites.get(slot.name, [])] if strategy == "hooks" else []
        self._params = [p for _, p in model.named_parameters() if p.requires_grad]
        if _reads_the_head(model, self._params):
            self.keeps_logits = False  # its gradient needs the head at every position

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
        """Per-example losses, with logits computed only where some example of the batch
        has a loss token next (the LM head and its backward cost ~20% of a small model's
        work at every position; a chat example's answer is a few of its tokens)."""
        keep = loss_positions(batch)
        if self.keeps_logits is not False:
            try:
                out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 use_cache=False, logits_to_keep=keep)
                self.keeps_logits = True
                return losses_at(out.logits, batch, keep)
            except TypeError:  # a model whose forward takes no logits_to_keep
                if self.keeps_logits:
                    raise
                self.keeps_logits = False
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
                "projecting per-example gradients in the hooks needs batched hooks on every "
                "parameter (strategy hooks); project the formed gradients instead"
            )
        if ([(b.rows, b.cols) for b in projector.blocks]
                != [matrix_shape(s.shape) for s in self.slots]):
            raise GradstoreError(
                f"the factored projection ({projector.spec.layout}) was built for other "
                f"modules than this model's {len(self.slots)}; build it from its parameters"
            )
        out = torch.zeros(batch.size, projector.spec.dim, dtype=torch.float32,
                          device=batch.input_ids.device)

        def add_block(index: int, _slot: ParamSlot, a: torch.Tensor, b: torch.Tensor) -> None:
            block = projector.blocks[index]
            out[:, block.offset : block.offset + block.dim].add_(
                projector.project_tokens(index, a, b, batch.attention_mask))

        return out, self._hooked_pass(batch, add_block)

    def _hooked(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        B = batch.size
        grads = torch.zeros(B, self.num_params, dtype=torch.float32,
                            device=batch.input_ids.device)
        keep = batch.attention_mask.unsqueeze(-1)

        def add_gradient(_index: int, slot: ParamSlot, a: torch.Tensor,
                         b: torch.Tensor) -> None:
            rows, cols = matrix_shape(slot.shape)
            dest = grads[:, slot.offset : slot.offset + slot.numel].view(B, rows, cols)
            b = b.float() * keep.to(torch.float32)  # padded tokens add nothing
            dest.add_(torch.bmm(a.float().transpose(1, 2), b))

        return grads, self._hooked_pass(batch, add_gradient)

    def _hooked_pass(self, batch: Batch, consume) -> torch.Tensor:
        """One forward and backward with hooks on every hooked layer: ``consume(index, slot,
        a, b)`` receives, for each use of parameter ``index``'s layer, the per-token factors
        (B, T, rows) and (B, T, cols) of its gradient (``HookSite.factors``; added, not
        copied, by the consumers: a layer applied twice in one forward gets both terms).
        Returns the losses."""
        handles = []
        width = tuple(batch.attention_mask.shape)

        def attach(index: int, site: HookSite, slot: ParamSlot):
            def forward_hook(_mod, inputs, output):
                if not output.requires_grad:  # e.g. a no-grad recomputation
                    return
                x = inputs[0]
                if x.ndim != 3 or tuple(x.shape[:2]) != width:
                    raise GradstoreError(
                        f"layer of {slot.name} saw inputs of shape {tuple(x.shape)}, not "
                        f"(batch, tokens, features) {width}; select other parameters, or use "
                        "LoRA for this model"
                    )
                output.register_hook(lambda gout: consume(index, slot, *site.factors(gout, x)))

            return site.module.register_forward_hook(forward_hook)

        try:
            for index, site, slot in self._sites:
                handles.append(attach(index, site, slot))
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
