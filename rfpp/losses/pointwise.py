"""Per-sample pointwise losses on velocities: `l2`, `l2_squared`, `pseudo_huber`.

Inputs are tensors of shape (N, ...) (usually (N, C, H, W)); every function returns shape (N,), one value per
sample, and the caller takes the mean. d = the number of elements of one sample (C·H·W). Low-precision inputs
(fp16/bf16, e.g. under autocast) are reduced in float32.
"""

from __future__ import annotations

import math

import torch

from rfpp.losses.kinds import HUBER_C_MODES

HUBER_C_FACTOR = 0.00054


def check_same_shape(pred: torch.Tensor, target: torch.Tensor, names: tuple[str, str] = ("pred", "target")) -> None:
    """Raise ValueError unless both tensors have the same shape (N, ...) with at least one sample dimension."""
    if pred.shape != target.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim < 2:
        raise ValueError(f"{names[0]} must have shape (N, ...) with at least 2 dimensions, got {tuple(pred.shape)}")


def _sq_err_sum(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-sample ‖pred − target‖² (shape (N,)) and d, in at least float32."""
    check_same_shape(pred, target)
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    diff = pred.to(dtype) - target.to(dtype)
    d = math.prod(pred.shape[1:])
    return diff.square().flatten(1).sum(dim=1), d


def l2_squared(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: ‖pred − target‖²/d → (N,). The 2-RF baseline loss."""
    sq, d = _sq_err_sum(pred, target)
    return sq / d


def l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error per sample: sqrt(‖pred − target‖²/d) → (N,)."""
    return l2_squared(pred, target).sqrt()


def huber_c(d: int, c_mode: str = "reference") -> float:
    """Pseudo-Huber constant for d elements per sample.

    "reference" (the paper's code): c = 0.00054·d; "ict" (iCT's form): c = 0.00054·√d.
    """
    if c_mode == "reference":
        return HUBER_C_FACTOR * d
    if c_mode == "ict":
        return HUBER_C_FACTOR * math.sqrt(d)
    raise ValueError(f"unknown c_mode {c_mode!r}; valid: {', '.join(HUBER_C_MODES)}")


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float | None = None,
                 c_mode: str = "reference") -> torch.Tensor:
    """Pseudo-Huber loss per sample: (sqrt(‖pred − target‖² + c²) − c)/d → (N,).

    With c=None, c = huber_c(d, c_mode): 0.00054·d ("reference", default) or 0.00054·√d ("ict").
    An explicit c overrides c_mode. The result is always divided by d, in both modes.
    """
    sq, d = _sq_err_sum(pred, target)
    c_default = huber_c(d, c_mode)  # validates c_mode even when c is given
    if c is None:
        c = c_default
    elif c < 0:
        raise ValueError(f"c must be non-negative, got {c}")
    return ((sq + c * c).sqrt() - c) / d
