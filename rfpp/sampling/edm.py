"""EDM's deterministic Heun sampler in σ space (Karras et al. 2022, Algorithm 1 without churn).

x starts at latents·σ_max; σ follows the ρ-schedule down to σ_N = 0; each step is Heun's method on
dx/dσ = (x − D(x, σ))/σ except the last one (to σ = 0), which is Euler. n steps cost 2n − 1 denoiser
calls (18 steps = 35 NFE). The state stays on the device in `state_dtype` (float64 by default, as EDM
does) and no step copies anything to the host; the network's own dtype is the denoiser's business
(`EDMDenoiser(net_dtype=…)`). Deterministic: no random numbers are drawn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rfpp.sampling.grids import edm_sigma_steps

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@torch.no_grad()
def edm_heun(denoiser: Denoiser, latents: torch.Tensor, num_steps: int, sigma_min: float = 0.002,
             sigma_max: float = 80.0, rho: float = 7.0, class_labels: torch.Tensor | None = None,
             state_dtype: torch.dtype = torch.float64, return_trajectory: bool = False,
             progress: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Images from unit-variance `latents` (N, C, H, W) with `denoiser(x, sigma, class_labels) → D`.

    `sigma` is passed as a (N,) tensor in `state_dtype`. Returns the images in `state_dtype`, or
    (images, trajectory) with trajectory the num_steps + 1 states, index 0 = latents·σ_max.
    """
    if not callable(denoiser):
        raise ValueError(f"denoiser must be callable D(x, sigma, class_labels), got {type(denoiser).__name__}")
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.ndim < 1:
        raise ValueError("latents must be a floating-point tensor with a batch dimension")
    if state_dtype not in (torch.float64, torch.float32):
        raise ValueError(f"state_dtype must be torch.float64 or torch.float32, got {state_dtype}")
    sigmas = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device, dtype=state_dtype)
    batch = latents.shape[0]
    per_sample = sigmas.unsqueeze(1).expand(-1, batch)  # row i: σ_i for every sample, no host copies
    gaps = sigmas.diff()  # σ_{i+1} − σ_i, negative

    def slope(x: torch.Tensor, i: int) -> torch.Tensor:
        denoised = denoiser(x, per_sample[i], class_labels).to(state_dtype)
        return (x - denoised) / sigmas[i]

    x = latents.to(state_dtype) * sigmas[0]
    trajectory = [x.clone()] if return_trajectory else None
    steps = range(num_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="EDM Heun", leave=False)
    for i in steps:
        h = gaps[i]
        d = slope(x, i)
        x_next = x + h * d
        if i < num_steps - 1:
            x_next = x + h * (d + slope(x_next, i + 1)) / 2
        x = x_next
        if trajectory is not None:
            trajectory.append(x.clone())
    return (x, trajectory) if trajectory is not None else x
