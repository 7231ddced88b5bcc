"""EDM's preconditioning as a denoiser D(x, σ), and its rectified-flow velocity form v(x_t, t).

Conventions (docs/conventions.md): RF time t ∈ (0, 1), t = 0 data, t = 1 noise, x_t = (1−t)·x + t·z. An EDM
denoiser at noise level σ sees x_t/(1−t) with σ = t/(1−t); the velocity is v = (x_t − D)/t, so that
x̂ = x_t − t·v = D. Images are in [−1, 1], NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def as_one_hot(class_labels: torch.Tensor | None, label_dim: int, batch: int,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """Class labels as (N, label_dim) floats: integer labels become one-hot; None gives zeros (EDM's
    behaviour for a conditional net called without labels); unconditional nets get None."""
    if label_dim == 0:
        return None
    if class_labels is None:
        return torch.zeros(batch, label_dim, device=device, dtype=dtype)
    if not class_labels.is_floating_point():
        if class_labels.ndim != 1:
            raise ValueError(f"integer class labels must have shape (N,), got {tuple(class_labels.shape)}")
        if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() >= label_dim):
            raise ValueError(f"class labels must lie in [0, {label_dim}), got {class_labels.tolist()}")
        class_labels = F.one_hot(class_labels.long(), label_dim)
    class_labels = class_labels.to(device=device, dtype=dtype).reshape(-1, label_dim)
    if class_labels.shape[0] == 1 and batch != 1:
        class_labels = class_labels.expand(batch, label_dim)
    if class_labels.shape[0] != batch:
        raise ValueError(f"got {class_labels.shape[0]} class labels for a batch of {batch}")
    return class_labels


def per_sample(value: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (N,) time/noise level as a (N, 1, 1, 1) tensor in `like`'s dtype and device."""
    value = torch.as_tensor(value, device=like.device).to(like.dtype).reshape(-1)
    if value.numel() == 1:
        value = value.expand(batch)
    if value.numel() != batch:
        raise ValueError(f"got {value.numel()} time/noise values for a batch of {batch}")
    return value.reshape(-1, 1, 1, 1)


class EDMDenoiser(nn.Module):
    """EDM's preconditioned denoiser D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise).

    c_skip = σ_d²/(σ²+σ_d²), c_out = σ·σ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ln(σ)/4.
    The preconditioning runs in float32 (float64 when x is float64); the network runs in `net_dtype`
    (None = the same; torch.bfloat16 or torch.float16 for speed). Augmentation labels are zero.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, net_dtype: torch.dtype | None = None):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.net_dtype = net_dtype

    @property
    def label_dim(self) -> int:
        return int(getattr(self.net, "label_dim", 0))

    @property
    def img_resolution(self) -> int:
        return int(self.net.config["img_resolution"])

    @property
    def img_channels(self) -> int:
        return int(self.net.config["in_channels"])

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        """(c_skip, c_out, c_in, c_noise) at noise levels σ of shape (N, 1, 1, 1): EDM's preconditioning.
        Other preconditionings (rfpp.teachers.VPDenoiser, VEDenoiser) override only this."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(work)
        sigma = per_sample(sigma, x.shape[0], x)
        labels = as_one_hot(class_labels, self.label_dim, x.shape[0], x.device, work)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = self.net_dtype or work
        out = self.net((c_in * x).to(dtype), c_noise.flatten(), None if labels is None else labels.to(dtype))
        return c_skip * x + c_out * out.to(work)


class EDMVelocity(nn.Module):
    """Rectified-flow velocity of an EDM denoiser: v(x_t, t) = (x_t − D(x_t/(1−t), t/(1−t)))/t.

    t ∈ (0, 1) per sample (shape (N,) or a scalar), t = 1 noise. The student of one round of Reflow is
    an EDMVelocity whose weights start from the teacher's.
    """

    def __init__(self, denoiser: EDMDenoiser):
        super().__init__()
        self.denoiser = denoiser

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def label_dim(self) -> int:
        return self.denoiser.label_dim

    @property
    def img_resolution(self) -> int:
        return self.denoiser.img_resolution

    @property
    def img_channels(self) -> int:
        return self.denoiser.img_channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        work = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        x_t = x_t.to(work)
        t = per_sample(t, x_t.shape[0], x_t)
        denoised = self.denoiser(x_t / (1 - t), (t / (1 - t)).flatten(), class_labels)
        return (x_t - denoised) / t
