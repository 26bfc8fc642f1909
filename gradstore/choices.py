"""The named choices every layer shares, defined once (no heavy imports: the CLI reads
them before torch is loaded)."""

from __future__ import annotations

METHODS = ("gtp", "gtp-paper", "omp", "less", "round-robin", "random")
"""Selection methods. gtp: the selection's mean gradient trajectory matches the target's
(each chosen example counts once, as a trainer uses it; pool-centred space); gtp-paper:
GTP as published (free non-negative weights, CoSaMP-style pursuit); omp: GradMatch's
greedy with NNLS weights; less: LESS's top-k by cosine; round-robin: the target's parts
(subtasks, else clusters) take turns choosing their best row by cosine (RDS+'s rule);
random."""

PURSUITS = ("gtp", "gtp-paper")
"""The methods ``--partitions`` applies to (a pursuit per part, then on their union)."""

TARGET_MODES = ("mean", "joint", "clusters", "parts")
"""mean: match the target's mean; joint: each subtask's mean (every subtask counts);
clusters: as joint, with subtasks found by clustering the target's rows (no labels);
parts (gtp): one pursuit per part of the target (its subtasks, else its clusters), each
with an equal share of the budget, their picks taken in turn."""

PART_SCORES = ("max", "mean")
"""How round-robin scores a pool row against a part of the target: its largest cosine
with one of the part's rows, or its cosine with the part's mean (LESS's score)."""

GRAD_TYPES = ("adam", "sgd", "sign")
"""What is stored for a per-example gradient g: Adam's step from the checkpoint's
moments, g itself, or sign(g)."""

PROJECTION_KINDS = ("rademacher", "countsketch", "factored", "none")
"""How per-example gradients are projected before storage: a dense sign matrix, a sparse
sign sketch, per-module two-sided blocks computed from the tokens (docs/projections.md),
or not at all."""

FEATURES = ("gradients", "hidden")
"""What ingestion stores per example: its projected per-example gradients, or (RDS+, Ivison
et al. 2025) its final hidden states pooled over the sequence with weights growing with the
position, unit-normalised (docs/storage.md, "Hidden-state features")."""

HIDDEN_TYPE = "hidden"
"""The stored type (a table's ``grad_type``) of hidden-state features: a table holds one
kind of features, so a gradient table and a hidden-state table never mix."""

SCAN_MODES = ("auto", "ram", "stream")
"""How a selection reads the pool: in RAM, streamed from Lance, or by its size (auto)."""

VECTOR_DTYPES = ("float16", "float32")
"""How stored vectors are kept."""
