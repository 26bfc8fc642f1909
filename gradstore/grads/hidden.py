"""Hidden-state features (RDS+, Ivison et al. 2025, arXiv 2503.01807): the model side of
``gradstore ingest --features hidden``.

Each example's feature is the causal LM's last hidden state (``hidden_states[-1]`` of
a forward with ``output_hidden_states=True``: the final layer's output after the final
norm in Llama, GPT-2 and most HF models), pooled over all of its tokens (prompt and
response) with SGPT's position-weighted mean (token p of n counts p + 1, weights summing
to 1), then scaled to unit length: selection scores between features are cosines.

Unlike RDS+'s own code, padding is masked out: positions are counted from each example's
first real token and padded positions weigh nothing, so an example's feature does not
depend on the batch it was computed in. Forward passes only (``torch.inference_mode``),
batched; no LoRA gradients and no projection are built. The rows it yields have the shape
of a gradient table's (one vector and loss per checkpoint), so the same writer, resume
and Ray paths store them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import nn

from gradstore.grads.examples import TokenizedExample
from gradstore.grads.ingestion import (
    BASE_CHECKPOINT,
    HIDDEN_POOLING,
    IngestConfig,
    IngestPlan,
    rows_block,
)
from gradstore.grads.model import CheckpointWeights, activate, load_model, lora_from_checkpoints
from gradstore.grads.per_example import Batch, collate, loss_positions, losses_at
from gradstore.store.database import RowBlock
from gradstore.store.meta import ProjectionSpec

NONFINITE = "non-finite hidden state or loss (try --dtype float32)"


def position_weighted_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) float32: each row's mean of ``hidden`` (B, L, H) over its real tokens
    (``attention_mask`` 1), token p (from the example's first real token, 0-based) weighted
    p + 1 and the weights scaled to sum to 1 (SGPT's weighted mean pooling)."""
    mask = attention_mask.to(torch.float32)
    position = torch.cumsum(mask, dim=1) * mask  # 1, 2, ..., n on real tokens, 0 on pads
    weights = position / position.sum(dim=1, keepdim=True)
    return torch.einsum("bl,blh->bh", weights, hidden.to(torch.float32))


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm (a zero row becomes NaN and is skipped)."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def hidden_spec(hidden_size: int) -> ProjectionSpec:
    """A hidden-state table's projection: none, its layout naming the pooling (so that a
    gradient table, whose layout never says so, is refused as its pool or target)."""
    return ProjectionSpec("none", None, hidden_size, hidden_size, None,
                          f"hidden states: {HIDDEN_POOLING}")


class HiddenStateRunner:
    """The model side of ``--features hidden``: pooled final hidden states (and the loss)
    of each example at every checkpoint, as blocks of complete rows."""

    def __init__(self, cfg: IngestConfig, plan: IngestPlan, device, dtype, pad_id: int) -> None:
        self.cfg, self.plan, self.device, self.pad_id = cfg, plan, device, pad_id
        lm = load_model(cfg.lm.model, cfg.lm.gguf_file, dtype, device, progress=cfg.progress)
        self.model, self.checkpoints = self._model_and_checkpoints(lm)
        for ckpt in self.checkpoints:  # a checkpoint that does not fit fails before any work
            self._activate(ckpt)
        self.spec = hidden_spec(int(lm.config.get_text_config().hidden_size))
        self.skipped: Counter[str] = Counter()
        self.skipped_ids: dict[str, list[str]] = {}
        self.nonfinite: set[str] = set()
        g = cfg.gradients
        self.chunk = max(g.batch_size, min(g.write_rows, 1024))
        self.keeps_logits: bool | None = None  # whether the forward takes logits_to_keep

    def _model_and_checkpoints(self, lm) -> tuple[nn.Module, list[CheckpointWeights]]:
        """The base model alone ("base"), or wrapped in the checkpoints' LoRA structure."""
        plan, paths = self.plan, self.plan.checkpoint_paths
        if not paths:
            return lm, [CheckpointWeights(BASE_CHECKPOINT, None, {}, plan.lrs[0])]
        model = lora_from_checkpoints(lm, paths).to(self.device).eval()
        return model, [
            CheckpointWeights(n, p, w, lr)
            for n, p, w, lr in zip(plan.checkpoint_names, paths, plan.adapter_weights,
                                   plan.lrs, strict=True)
        ]

    def _activate(self, ckpt: CheckpointWeights) -> None:
        if ckpt.path is not None:
            activate(self.model, ckpt)

    def run(self, todo: list[int], on_batch=None):
        """Yield one RowBlock per chunk of examples (indices into plan.examples)."""
        yield from self.blocks([self.plan.examples[i] for i in todo], todo, on_batch)

    def blocks(self, examples: list[TokenizedExample], rows: list[int], on_batch=None):
        """Yield one RowBlock per chunk of ``examples`` (data-order positions ``rows``);
        within a chunk the batches are formed by length (less padding)."""
        for start in range(0, len(examples), self.chunk):
            part = sorted(range(start, min(len(examples), start + self.chunk)),
                          key=lambda i: examples[i].num_tokens)
            yield self._chunk([examples[i] for i in part], [rows[i] for i in part], on_batch)

    def _chunk(self, exs: list[TokenizedExample], rows: list[int], on_batch) -> RowBlock:
        T, bs = len(self.checkpoints), self.cfg.gradients.batch_size
        vecs = np.empty((T, len(exs), self.spec.dim), dtype=np.float32)
        losses = np.empty((T, len(exs)), dtype=np.float32)
        batches = [collate([e.input_ids for e in exs[s : s + bs]],
                           [e.loss_mask for e in exs[s : s + bs]], self.pad_id, self.device)
                   for s in range(0, len(exs), bs)]
        for t, ckpt in enumerate(self.checkpoints):  # each adapter loaded once per chunk
            if T > 1:
                self._activate(ckpt)
            s = 0
            for batch in batches:
                v, loss = self.features(batch)
                vecs[t, s : s + batch.size] = v.cpu().numpy()
                losses[t, s : s + batch.size] = loss.cpu().numpy()
                s += batch.size
                if on_batch is not None and t == T - 1:
                    on_batch(batch.size)
        ok = np.isfinite(losses).all(axis=0) & np.isfinite(vecs).all(axis=(0, 2))
        if not ok.all():
            bad = [e.id for e, good in zip(exs, ok, strict=True) if not good]
            self.skipped[NONFINITE] += len(bad)
            self.skipped_ids.setdefault(NONFINITE, []).extend(bad[:5])
            self.nonfinite.update(bad)
        return rows_block(exs, rows, ok, vecs, losses)

    @torch.inference_mode()
    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) unit features and (B,) losses of one right-padded batch at the active
        checkpoint; logits only where a loss token is predicted (as gradients take it)."""
        keep = loss_positions(batch)
        kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "use_cache": False, "output_hidden_states": True}
        out = None
        if self.keeps_logits is not False:
            try:
                out = self.model(**kw, logits_to_keep=keep)
                self.keeps_logits = True
            except TypeError:  # a model whose forward takes no logits_to_keep
                if self.keeps_logits:
                    raise
                self.keeps_logits = False
        if out is None:
            out = self.model(**kw)
            keep = torch.arange(batch.input_ids.shape[1] - 1, device=keep.device)
            logits = out.logits[:, :-1]
        else:
            logits = out.logits
        pooled = position_weighted_mean(out.hidden_states[-1], batch.attention_mask)
        return unit_rows(pooled), losses_at(logits, batch, keep)
