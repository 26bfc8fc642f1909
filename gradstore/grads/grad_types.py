"""Gradient types: what is stored for a per-example gradient g at a checkpoint.

- ``sgd``:  g itself.
- ``sign``: sign(g) (the direction a sign-based optimizer would step).
- ``adam``: the step Adam would take for this one example from the checkpoint's
  saved moments (m, v): m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2,
  update = m' / (sqrt(v') + eps), as in LESS (no bias correction).
"""

from __future__ import annotations

import torch

from gradstore.choices import GRAD_TYPES
from gradstore.errors import GradstoreError
from gradstore.grads.optimizer_state import AdamMoments


def apply_grad_type(
    grads: torch.Tensor, grad_type: str, moments: AdamMoments | None = None
) -> torch.Tensor:
    """Transform (B, P) per-example gradients; ``grads`` may be overwritten."""
    if grad_type == "sgd":
        return grads
    if grad_type == "sign":
        return grads.sign_()
    if grad_type != "adam":
        raise GradstoreError(f"gradient type {grad_type!r} is not one of {', '.join(GRAD_TYPES)}")
    if moments is None:
        raise GradstoreError("adam gradients need the checkpoint's saved optimizer state")
    b1, b2 = moments.beta1, moments.beta2
    v = grads.square().mul_(1 - b2).add_(moments.exp_avg_sq, alpha=b2)
    m = grads.mul_(1 - b1).add_(moments.exp_avg, alpha=b1)
    return m.div_(v.sqrt_().add_(moments.eps))
