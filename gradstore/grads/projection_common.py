"""What every projection shares: its seeded random stream and its argument checks.

Each projection draws its randomness from ``PCG64.random_raw`` seeded by
``SeedSequence([seed, stream_index, tag])``: the raw 64-bit words (not numpy's
``Generator`` methods, whose algorithms may change) are stable across numpy versions and
platforms. ``tag`` tells the kinds' streams apart; ``stream_index`` is a block of input
coordinates (rademacher, countsketch) or a module and its side (factored).
"""

from __future__ import annotations

import numpy as np
import torch

from gradstore.errors import GradstoreError

RADEMACHER_TAG = 1
COUNTSKETCH_TAG = 2
FACTORED_LEFT_TAG = 3  # a module's output-side matrix
FACTORED_RIGHT_TAG = 4  # a module's input-side matrix


def raw_words(seed: int, stream_index: int, tag: int, count: int) -> np.ndarray:
    """The first ``count`` uint64 words of one stream (little-endian dtype)."""
    bit_generator = np.random.PCG64(np.random.SeedSequence([seed, stream_index, tag]))
    return bit_generator.random_raw(count).astype("<u8", copy=False)


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int, refused unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise GradstoreError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_grads(grads: torch.Tensor, input_dim: int) -> torch.Tensor:
    """Validate a (B, input_dim) floating tensor and return it as float32."""
    if not isinstance(grads, torch.Tensor):
        raise GradstoreError(f"grads must be a torch.Tensor, got {type(grads).__name__}")
    if grads.ndim != 2:
        raise GradstoreError(
            f"grads must be 2-D (batch, {input_dim}), got shape {tuple(grads.shape)}; "
            "flatten each example's gradient into one row"
        )
    if grads.shape[1] != input_dim:
        raise GradstoreError(
            f"grads have {grads.shape[1]} columns but this projection expects "
            f"input_dim={input_dim}; build the projector for the model's trainable parameters"
        )
    if not grads.is_floating_point():
        raise GradstoreError(f"grads must be floating point, got dtype {grads.dtype}")
    return grads.to(torch.float32)


def check_rows(start: int, stop: int, input_dim: int) -> None:
    """Refuse a row range of a projection matrix outside [0, input_dim)."""
    if not 0 <= start <= stop <= input_dim:
        raise GradstoreError(
            f"rows [{start}, {stop}) are outside [0, {input_dim}); need 0 <= start <= stop"
        )
