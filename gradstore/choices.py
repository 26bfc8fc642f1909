"""The named choices every layer shares, defined once (no heavy imports: the CLI reads
them before torch is loaded)."""

from __future__ import annotations

METHODS = ("gtp", "gtp-paper", "omp", "less", "random")
"""Selection methods. gtp: the selection's mean gradient trajectory matches the target's
(each chosen example counts once, as a trainer uses it; pool-centred space); gtp-paper:
GTP as published (free non-negative weights, CoSaMP-style pursuit); omp: GradMatch's
greedy with NNLS weights; less: LESS's top-k by cosine; random."""

PURSUITS = ("gtp", "gtp-paper")
"""The methods ``--partitions`` applies to (a pursuit per part, then on their union)."""

TARGET_MODES = ("mean", "joint", "clusters")
"""mean: match the target's mean; joint: each subtask's mean (every subtask counts);
clusters: as joint, with subtasks found by clustering the target's rows (no labels)."""

GRAD_TYPES = ("adam", "sgd", "sign")
"""What is stored for a per-example gradient g: Adam's step from the checkpoint's
moments, g itself, or sign(g)."""

PROJECTION_KINDS = ("rademacher", "countsketch", "factored", "none")
"""How per-example gradients are projected before storage: a dense sign matrix, a sparse
sign sketch, per-module two-sided blocks computed from the tokens (docs/projections.md),
or not at all."""

SCAN_MODES = ("auto", "ram", "stream")
"""How a selection reads the pool: in RAM, streamed from Lance, or by its size (auto)."""

VECTOR_DTYPES = ("float16", "float32")
"""How stored vectors are kept."""
