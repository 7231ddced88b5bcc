"""Samplers: rectified-flow ODE sampling and inversion, straightness, and EDM's Heun sampler.

RF time t = 1 is noise, t = 0 data (docs/conventions.md, "Sampling and NFE"); EDM's sampler works in σ.
"""

from rfpp.lazy import exports, names

_IMPORTS = {
    "edm": ("edm_heun",),
    "grids": (
        "SOLVERS",
        "default_grid",
        "edm_sigma_steps",
        "inversion_grid",
        "nfe_for_steps",
        "steps_for_nfe",
        "user_grid",
    ),
    "ode": (
        "SOLVER_STEPS",
        "UPDATE_RULES",
        "decode",
        "default_update",
        "euler_step",
        "heun_step",
        "integrate",
        "invert",
        "new_update",
        "sample",
    ),
    "straightness": ("straightness", "straightness_per_sample"),
    "kinds": ("UPDATES",),
}
__all__ = names(_IMPORTS)
__getattr__ = exports(__name__, _IMPORTS)  # on first use: rfpp.sampling.kinds loads without torch
