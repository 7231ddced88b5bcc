"""The teacher as a function noise -> image for pair generation.

- `edm_heun`: an EDM denoiser with EDM's deterministic Heun sampler in σ (ρ = 7, σ ∈ [0.002, 80]),
  `steps` steps = 2·steps − 1 NFE (18 steps = 35 NFE for CIFAR-10). The noise is EDM's latents.
- `rf_heun` / `rf_euler`: a rectified-flow teacher v(x_t, t) integrated from t = 1 to 0 with `steps`
  NFE (odd for Heun), the plain ODE update.
The network runs in `dtype` (float32 by default; bfloat16/float16 for speed), the state in float32
or float64 as the sampler defines.
"""

from __future__ import annotations

import torch

from rfpp.nets import EDMDenoiser, EDMVelocity
from rfpp.pairs.kinds import DTYPES as DTYPE_NAMES
from rfpp.pairs.kinds import SAMPLERS
from rfpp.pairs.shards import TeacherFn
from rfpp.sampling import edm_heun, sample

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def nfe_of(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "edm_heun" else steps


def teacher_function(model: EDMDenoiser | EDMVelocity, sampler: str, steps: int, dtype: str = "float32") -> TeacherFn:
    """Wrap a teacher (denoiser or velocity) and its sampler into teacher(noise, labels) -> images in [−1, 1]."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown pair sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown teacher dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    denoiser = model.denoiser if isinstance(model, EDMVelocity) else model
    denoiser.net_dtype = DTYPES[dtype]
    if sampler == "edm_heun":
        def run(noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            return edm_heun(denoiser, noise, num_steps=steps, class_labels=labels)
    else:
        velocity = EDMVelocity(denoiser)
        solver = "heun" if sampler == "rf_heun" else "euler"

        def run(noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            return sample(velocity, noise, nfe=steps, solver=solver, update="default", class_labels=labels)
    return run
