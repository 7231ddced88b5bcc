"""Straightness of a sampling trajectory (docs/conventions.md, "Straightness"; the reference's definition).

For states x_0 … x_N (N steps, x_0 the start) and Δ = 1/N:
S = (1/N)·Σ_{i=1..N} mean[((x_{i−1} − x_i)/Δ − (x_0 − x_N))²].
The grid is assumed even whatever the solver and times actually used (as the reference does).
S = 0 exactly when every step moves by the same amount.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _stack(trajectory: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Trajectory as one float64 tensor of shape (N + 1, batch, …)."""
    if isinstance(trajectory, torch.Tensor):
        states = trajectory
    else:
        states = list(trajectory)
        if not states or not all(isinstance(s, torch.Tensor) for s in states):
            raise ValueError("trajectory must be a non-empty list of tensors or a stacked tensor")
        if any(s.shape != states[0].shape for s in states):
            raise ValueError(f"trajectory states differ in shape: {sorted({tuple(s.shape) for s in states})}")
        states = torch.stack([s.detach() for s in states])
    if states.ndim < 2 or states.shape[0] < 2:
        raise ValueError(f"a trajectory needs at least two states with a batch dimension, got shape "
                         f"{tuple(states.shape)}")
    return states.detach().double()


def _squared_deviation(trajectory: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    states = _stack(trajectory)
    n = states.shape[0] - 1
    steps = (states[:-1] - states[1:]) * n  # (x_{i−1} − x_i)/Δ, shape (N, batch, …)
    return (steps - (states[0] - states[-1])) ** 2


def straightness(trajectory: Sequence[torch.Tensor] | torch.Tensor) -> float:
    """S of a trajectory (list of N + 1 states or a tensor (N + 1, batch, …)), averaged over every element."""
    return float(_squared_deviation(trajectory).mean())


def straightness_per_sample(trajectory: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """S per sample, shape (batch,), float64 (the reference's mean=False); its mean is `straightness`."""
    dev = _squared_deviation(trajectory)
    return dev.mean(dim=0).flatten(1).mean(dim=1)
