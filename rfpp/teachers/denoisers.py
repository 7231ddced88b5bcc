"""VP and VE preconditioning (Song et al.'s score-SDE parameterisations, as EDM writes them) as denoisers.

Both are subclasses of :class:`rfpp.nets.EDMDenoiser`, so they plug in wherever an EDM denoiser does (for instance
``rfpp.nets.EDMVelocity``); only the coefficients of D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise) differ:

- VP: c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = (M−1)·t(σ) with
  t(σ) = (√(β_min² + 2·β_d·ln(1+σ²)) − β_min)/β_d.
- VE: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2).

EDM's pretrained ``edm-*-vp.pkl`` / ``edm-*-ve.pkl`` files are EDMPrecond networks; these classes serve the
config-A ``baseline-*`` snapshots.
"""

from __future__ import annotations

import torch
from torch import nn

from rfpp.nets import EDMDenoiser


class VPDenoiser(EDMDenoiser):
    """Variance-preserving preconditioning (EDM's VPPrecond)."""

    def __init__(self, net: nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 net_dtype: torch.dtype | None = None):
        super().__init__(net, sigma_data=0.5, net_dtype=net_dtype)
        self.beta_d, self.beta_min, self.M = float(beta_d), float(beta_min), int(M)

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """The VP time t ∈ (0, 1] of noise level σ."""
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEDenoiser(EDMDenoiser):
    """Variance-exploding preconditioning (EDM's VEPrecond)."""

    def __init__(self, net: nn.Module, net_dtype: torch.dtype | None = None):
        super().__init__(net, sigma_data=0.5, net_dtype=net_dtype)

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        return 1.0, sigma, 1.0, (0.5 * sigma).log()
