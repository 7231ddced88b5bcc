"""Training-time distributions over RF time t ∈ [1e−5, 1 − 1e−5] (t = 0 data, t = 1 noise).

All draws are closed form on the requested device from an explicit `torch.Generator`, so a run is
reproducible and no host round trip sits in the training step.

- `u_shaped(a)`: p(t) = a·cosh(a(t−½)) / (2·sinh(a/2)) (the paper's; a = 4 by default). Drawn as
  t = log1p(u·expm1(a))/a (density ∝ e^{a t}) and mirrored to 1 − t with probability ½.
- `uniform`: p(t) = 1.
- `logit_normal(mean, std)`: t = sigmoid(mean + std·ε), ε ~ N(0, 1).

Every kind is finally squeezed affinely into [T_MIN, T_MAX]: t ← t·(T_MAX − T_MIN) + T_MIN.
torch is imported inside the functions, so that rfpp.config reads KINDS without loading it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

T_MIN = 1e-5
T_MAX = 1 - 1e-5
KINDS = ("u_shaped", "uniform", "logit_normal")  # train.arms.*.timesteps


def _uniform(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    import torch

    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def sample_timesteps(n: int, kind: str = "u_shaped", a: float = 4.0, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, mean: float = 0.0, std: float = 1.0,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """Draw n training times of the given kind; returns shape (n,), values in [T_MIN, T_MAX].

    The generator must live on `device` (torch's rule); with no generator the global RNG is used; dtype None is
    torch.float32.
    """
    import torch

    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if device is None and generator is not None:
        device = generator.device
    if kind == "u_shaped":
        if not a > 0 or not math.isfinite(a):
            raise ValueError(f"the U-shaped density needs a finite a > 0, got a={a}")
        u = _uniform(n, generator, device)
        t = torch.log1p(u * math.expm1(a)) / a
        flip = _uniform(n, generator, device) < 0.5
        t = torch.where(flip, 1 - t, t)
    elif kind == "uniform":
        t = _uniform(n, generator, device)
    elif kind == "logit_normal":
        if not std > 0:
            raise ValueError(f"logit_normal needs std > 0, got std={std}")
        eps = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        t = torch.sigmoid(mean + std * eps)
    else:
        raise ValueError(f"unknown timestep distribution {kind!r}; choose one of {', '.join(KINDS)}")
    return (t * (T_MAX - T_MIN) + T_MIN).to(torch.float32 if dtype is None else dtype)


def density(t: torch.Tensor, kind: str = "u_shaped", a: float = 4.0, mean: float = 0.0,
            std: float = 1.0) -> torch.Tensor:
    """Probability density of the unsqueezed distribution at t ∈ (0, 1) (for plots and tests)."""
    import torch

    t = torch.as_tensor(t, dtype=torch.float64)
    if kind == "u_shaped":
        return a * torch.cosh(a * (t - 0.5)) / (2 * math.sinh(a / 2))
    if kind == "uniform":
        return torch.ones_like(t)
    if kind == "logit_normal":
        logit = torch.log(t) - torch.log1p(-t)
        return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
    raise ValueError(f"unknown timestep distribution {kind!r}; choose one of {', '.join(KINDS)}")


def cdf(t: torch.Tensor, kind: str = "u_shaped", a: float = 4.0, mean: float = 0.0,
        std: float = 1.0) -> torch.Tensor:
    """Cumulative distribution of the squeezed distribution on [T_MIN, T_MAX] (for KS tests)."""
    import torch

    t = torch.as_tensor(t, dtype=torch.float64)
    s = ((t - T_MIN) / (T_MAX - T_MIN)).clamp(0, 1)
    if kind == "u_shaped":
        return 0.5 + (torch.sinh(a * (s - 0.5))) / (2 * math.sinh(a / 2))
    if kind == "uniform":
        return s
    if kind == "logit_normal":
        logit = torch.log(s) - torch.log1p(-s)
        return 0.5 * (1 + torch.erf((logit - mean) / (std * math.sqrt(2))))
    raise ValueError(f"unknown timestep distribution {kind!r}; choose one of {', '.join(KINDS)}")
