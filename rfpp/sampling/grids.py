"""Time grids of the rectified-flow samplers and EDM's σ grid.

RF time runs t = 1 (noise) → t = 0 (data) when sampling and t ≈ 0 → 1 when inverting an image.
Grids are plain Python floats (double precision), so building them costs no device work and walking
them needs no host round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rfpp.sampling.kinds import SOLVERS as SOLVERS
from rfpp.sampling.kinds import T_START, check_int, check_t_start
from rfpp.sampling.kinds import nfe_for_steps as nfe_for_steps
from rfpp.sampling.kinds import steps_for_nfe as steps_for_nfe

T_INVERT_START = 1e-3  # first point of the default inversion grid (the reference's)


def default_grid(steps: int, t_start: float = T_START) -> list[float]:
    """Sampling grid t_i = i/steps for i = steps … 0, the first point replaced by `t_start` (steps + 1 points).

    t_start defaults to the reference's 1 − 1e−5. A network is only as good at t_start as its training
    covered it: a short run rarely draws t that close to 1, where σ = t/(1 − t) runs up to 1e5 (see
    docs/digits-findings.md); `sample.t_start` moves the first point.
    """
    steps = check_int("steps", steps)
    grid = [i / steps for i in range(steps, -1, -1)]
    grid[0] = check_t_start(t_start, steps)
    return grid


def inversion_grid(steps: int, t_start: float = T_INVERT_START) -> list[float]:
    """Inversion grid t_i = i/steps for i = 0 … steps, the first point replaced by `t_start` (steps + 1 points)."""
    steps = check_int("steps", steps)
    if isinstance(t_start, bool) or not isinstance(t_start, int | float) or not 0 < t_start < 1 / steps:
        raise ValueError(f"t_start must lie in (0, 1/steps) = (0, {1 / steps}), got {t_start!r}")
    grid = [i / steps for i in range(steps + 1)]
    grid[0] = float(t_start)
    return grid


def user_grid(schedule: Sequence[float] | torch.Tensor) -> list[float]:
    """Validate a user's descending sampling grid and append the final point 0 when it is absent.

    Every point must be finite and lie in (0, 1], except a trailing 0; points must strictly decrease.
    Returns at least two points (one step).
    """
    if isinstance(schedule, torch.Tensor):
        if schedule.ndim != 1:
            raise ValueError(f"schedule must be one-dimensional, got shape {tuple(schedule.shape)}")
        points = [float(t) for t in schedule.detach().cpu().double().tolist()]
    elif isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence) and not hasattr(schedule, "__iter__"):
        raise ValueError(f"schedule must be a sequence of times, got {schedule!r}")
    else:
        try:
            points = [float(t) for t in schedule]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"schedule must hold numbers, got {schedule!r}") from exc
    if not points:
        raise ValueError("schedule is empty")
    if not all(math.isfinite(t) for t in points):
        raise ValueError(f"schedule holds a non-finite time: {points}")
    if points[-1] != 0.0:
        points.append(0.0)
    if len(points) < 2:
        raise ValueError("schedule must hold at least one time above 0")
    bad = [t for t in points[:-1] if not 0.0 < t <= 1.0]
    if bad:
        raise ValueError(f"schedule times must lie in (0, 1] (a final 0 is allowed), got {bad} in {points}")
    if any(b >= a for a, b in zip(points[:-1], points[1:], strict=True)):
        raise ValueError(f"schedule must be strictly descending (t = 1 noise → t = 0 data), got {points}")
    return points


def edm_sigma_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """EDM's ρ-schedule σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … n−1, then σ_n = 0.

    Shape (num_steps + 1,). With num_steps = 1 the grid is [σ_max, 0] (EDM's formula divides by zero there).
    """
    num_steps = check_int("num_steps", num_steps)
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min} >= {sigma_max}")
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    frac = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    sigmas = (hi + frac * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)
