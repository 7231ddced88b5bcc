"""Samplers: rectified-flow ODE sampling and inversion, straightness, and EDM's Heun sampler.

RF time t = 1 is noise, t = 0 data (docs/conventions.md, "Sampling and NFE"); EDM's sampler works in σ.
"""

from rfpp.sampling.edm import edm_heun
from rfpp.sampling.grids import (
    SOLVERS,
    default_grid,
    edm_sigma_steps,
    inversion_grid,
    nfe_for_steps,
    steps_for_nfe,
    user_grid,
)
from rfpp.sampling.ode import (
    SOLVER_STEPS,
    UPDATE_RULES,
    decode,
    default_update,
    euler_step,
    heun_step,
    integrate,
    invert,
    new_update,
    sample,
)
from rfpp.sampling.straightness import straightness, straightness_per_sample

__all__ = [
    "SOLVERS",
    "SOLVER_STEPS",
    "UPDATE_RULES",
    "decode",
    "default_grid",
    "default_update",
    "edm_heun",
    "edm_sigma_steps",
    "euler_step",
    "heun_step",
    "integrate",
    "invert",
    "inversion_grid",
    "new_update",
    "nfe_for_steps",
    "sample",
    "steps_for_nfe",
    "straightness",
    "straightness_per_sample",
    "user_grid",
]
