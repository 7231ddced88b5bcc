"""Samplers: rectified-flow ODE sampling and inversion, straightness, and EDM's Heun sampler.

RF time t = 1 is noise, t = 0 data (docs/conventions.md, "Sampling and NFE"); EDM's sampler works in σ.
"""

import lazy_loader

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
# Submodules load on first use (lazy_loader): rfpp.sampling.kinds, read by rfpp.config, loads without torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_IMPORTS)
