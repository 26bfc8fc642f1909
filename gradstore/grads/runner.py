"""The model side of ingestion: per-example gradients at every checkpoint, transformed to
each stored gradient type and projected, as blocks of complete rows."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from gradstore.choices import HIDDEN_TYPE
from gradstore.errors import GradstoreError
from gradstore.grads.examples import TokenizedExample
from gradstore.grads.factored_projection import FactoredProjector
from gradstore.grads.grad_types import apply_grad_type
from gradstore.grads.hidden import HiddenStateRunner
from gradstore.grads.ingestion import (
    BASE_CHECKPOINT,
    FRESH_CHECKPOINT,
    RAW_BUFFER_BYTES,
    IngestConfig,
    IngestPlan,
    lora_spec,
    rows_block,
)
from gradstore.grads.model import (
    CheckpointWeights,
    activate,
    fresh_lora,
    load_model,
    lora_from_checkpoints,
)
from gradstore.grads.optimizer_state import (
    AdamMoments,
    load_adam_moments,
)
from gradstore.grads.param_selection import parameter_set_fingerprint, select_parameters
from gradstore.grads.per_example import Batch, PerExampleGradients, collate
from gradstore.grads.projection import make_projector
from gradstore.store.database import RowBlock
from gradstore.store.meta import FLOAT16_MAX, ProjectionSpec


def make_runner(cfg: IngestConfig, plan: IngestPlan, device, dtype, pad_id: int
                ) -> GradientRunner | HiddenStateRunner:
    """The model side of an ingestion: per-example gradients, or (``--features hidden``)
    pooled hidden states; both yield the same rows (``run``, ``blocks``) and report their
    ``spec``, ``skipped`` and ``nonfinite`` examples alike."""
    if cfg.features == HIDDEN_TYPE:
        return HiddenStateRunner(cfg, plan, device, dtype, pad_id)
    return GradientRunner(cfg, plan, device, dtype, pad_id)


class GradientRunner:
    """The model side: per-example gradients at every checkpoint, transformed and projected."""

    def __init__(self, cfg: IngestConfig, plan: IngestPlan, device, dtype, pad_id: int) -> None:
        self.cfg, self.plan, self.device = cfg, plan, device
        lm = load_model(cfg.lm.model, cfg.lm.gguf_file, dtype, device, progress=cfg.progress)
        self.model, self.checkpoints = self._model_and_checkpoints(lm)
        self.grads = PerExampleGradients(self.model, full_layers=bool(cfg.params))
        for ckpt in self.checkpoints:  # a checkpoint that does not fit fails before any work
            self._activate(ckpt)
        self.moments: list[AdamMoments | None] = [
            load_adam_moments(c.path, self.grads.slots).to(device)
            if "adam" in plan.grad_types else None
            for c in self.checkpoints
        ]
        g = cfg.gradients
        dim = self.grads.num_params if g.projection == "none" else g.proj_dim
        chosen = (parameter_set_fingerprint(self.grads.names, self.grads.shapes)
                  if cfg.params else None)
        self.projector = make_projector(g.projection, self.grads.num_params, dim, seed=g.seed,
                                        nnz=g.nnz, module_shapes=self.grads.shapes,
                                        parameter_set=chosen)
        # plain gradients under a factored projection are projected in the hooks, never
        # formed; a transform of each entry (adam, sign) needs them formed first
        self.in_hooks = (isinstance(self.projector, FactoredProjector)
                         and plan.grad_types == ["sgd"] and self.grads.strategy == "hooks")
        self.pad_id = pad_id
        self.skipped: Counter[str] = Counter()
        self.skipped_ids: dict[str, list[str]] = {}
        self.nonfinite: set[str] = set()
        T, P = len(self.checkpoints), self.grads.num_params
        # one projection call per chunk amortises generating the projection matrix
        by_memory = RAW_BUFFER_BYTES // max(1, len(plan.grad_types) * T * P * 4)
        self.chunk = max(cfg.gradients.batch_size, min(by_memory, cfg.gradients.write_rows, 256))

    @property
    def spec(self) -> ProjectionSpec:
        """How the stored vectors were projected (recorded with the table)."""
        return self.projector.spec

    def _model_and_checkpoints(self, lm) -> tuple[torch.nn.Module, list[CheckpointWeights]]:
        """The model gradients are taken of, and its checkpoints: the LoRA checkpoints'
        adapters, a fresh LoRA, or (``--params``) the base model's chosen parameters."""
        cfg, plan, paths = self.cfg, self.plan, self.plan.checkpoint_paths
        if cfg.params:
            select_parameters(lm, cfg.params)
            return lm, [CheckpointWeights(BASE_CHECKPOINT, None, {}, plan.lrs[0])]
        if paths:
            model = lora_from_checkpoints(lm, paths).to(self.device)
            return model, [
                CheckpointWeights(n, p, w, lr)
                for n, p, w, lr in zip(
                    plan.checkpoint_names, paths, plan.adapter_weights, plan.lrs, strict=True
                )
            ]
        from peft import get_peft_model_state_dict

        model = fresh_lora(lm, lora_spec(cfg)).to(self.device)
        state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return model, [CheckpointWeights(FRESH_CHECKPOINT, None, state, plan.lrs[0])]

    def _activate(self, ckpt: CheckpointWeights) -> None:
        """Load a checkpoint's adapter weights (the base model's own have none to load)."""
        if not self.cfg.params:
            activate(self.model, ckpt)

    def run(self, todo: list[int], on_batch=None):
        """Yield one RowBlock per chunk of examples (indices into plan.examples).

        ``on_batch(n)`` is called after each batch of ``n`` examples is done.
        """
        yield from self.blocks([self.plan.examples[i] for i in todo], todo, on_batch)

    def blocks(self, examples: list[TokenizedExample], rows: list[int], on_batch=None):
        """Yield one RowBlock per chunk of ``examples`` (whose data-order positions are
        ``rows``), at most ``self.chunk`` per projection call."""
        chunks = -(-len(examples) // self.chunk)
        size = -(-len(examples) // max(1, chunks))  # equal chunks: no small, slow last projection
        for start in range(0, len(examples), size):
            part = sorted(range(start, min(len(examples), start + size)),
                          key=lambda i: examples[i].num_tokens)
            yield self._chunk([examples[i] for i in part], [rows[i] for i in part], on_batch)

    def _chunk(self, exs: list[TokenizedExample], rows: list[int], on_batch) -> RowBlock:
        T, bs = len(self.checkpoints), self.cfg.gradients.batch_size
        width = self.projector.spec.dim if self.in_hooks else self.grads.num_params
        raw = {t: torch.empty(T, len(exs), width, dtype=torch.float32, device=self.device)
               for t in self.plan.grad_types}
        losses = np.empty((T, len(exs)), dtype=np.float32)
        for s in range(0, len(exs), bs):
            part = exs[s : s + bs]
            batch = collate(
                [e.input_ids for e in part], [e.loss_mask for e in part], self.pad_id, self.device
            )
            for t, ckpt in enumerate(self.checkpoints):
                if T > 1:  # a single checkpoint stays loaded from __init__
                    self._activate(ckpt)
                rows_by_type, loss = self._batch_rows(batch, self.moments[t])
                for gt, g in rows_by_type.items():
                    raw[gt][t, s : s + len(part)] = g
                losses[t, s : s + len(part)] = loss.cpu().numpy()
            if on_batch is not None:
                on_batch(len(part))
        vecs = {gt: self._projected(r).cpu().numpy() for gt, r in raw.items()}
        ok = np.isfinite(losses).all(axis=0)
        for v in vecs.values():
            ok &= np.isfinite(v).all(axis=(0, 2))
        if not ok.all():
            reason = "non-finite gradient or loss (try --dtype float32)"
            bad = [e.id for e, good in zip(exs, ok, strict=True) if not good]
            self.skipped[reason] += len(bad)
            self.skipped_ids.setdefault(reason, []).extend(bad[:5])
            self.nonfinite.update(bad)
        if self.cfg.gradients.vector_dtype == "float16" and ok.any():
            peak = max(float(np.abs(v[:, ok]).max()) for v in vecs.values())
            if peak >= FLOAT16_MAX:
                raise GradstoreError(
                    f"projected gradients reach {peak:.3g}, beyond float16's range; "
                    "rerun with --vector-dtype float32 and --overwrite"
                )
        return rows_block(exs, rows, ok, vecs[self.plan.grad_type], losses,
                          {gt: vecs[gt] for gt in self.plan.extra_types})

    def _batch_rows(
        self, batch: Batch, moments: AdamMoments | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each stored type's rows for one batch at the active checkpoint, (B, P) gradients
        (or (B, dim) projections, ``in_hooks``), and the (B,) losses."""
        if self.in_hooks:
            projected, loss = self.grads.projected(batch, self.projector)
            return {"sgd": projected}, loss
        g, loss = self.grads(batch)
        types, out = self.plan.grad_types, {}
        for i, gt in enumerate(types):  # the transform may overwrite g: copy first
            out[gt] = apply_grad_type(g if i == len(types) - 1 else g.clone(), gt, moments)
        return out, loss

    def _projected(self, raw: torch.Tensor) -> torch.Tensor:
        """(T, n, P) rows projected to (T, n, dim), in one call (already so: ``in_hooks``)."""
        if self.in_hooks:
            return raw
        T, n, _ = raw.shape
        return self.projector.project(raw.view(T * n, -1)).view(T, n, -1)
