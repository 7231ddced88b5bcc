"""The sampler names a profile chooses among (sample.solver, sample.update) and the NFE arithmetic that checks a
profile's sample section (steps per NFE, the first grid point), in pure Python so that rfpp.config needs no torch;
rfpp.sampling.grids re-exports them."""

from __future__ import annotations

import math
import operator

T_START = 1 - 1e-5  # first point of the default sampling grid (the reference's)

SOLVERS = ("euler", "heun")
UPDATES = ("default", "new")  # rfpp.sampling.ode.UPDATE_RULES: the plain step and the paper's


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """`value` as an int ≥ minimum, or a ValueError naming `name`."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def steps_for_nfe(nfe: int, solver: str) -> int:
    """Number of solver steps that spend exactly `nfe` network evaluations.

    Euler: one evaluation per step. Heun: two per step except the last (Euler), so NFE must be odd
    and gives (NFE + 1)/2 steps.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    nfe = check_int("nfe", nfe)
    if solver == "heun":
        if nfe % 2 == 0:
            raise ValueError(f"Heun needs an odd NFE (2 per step, 1 on the last), got nfe={nfe}")
        return (nfe + 1) // 2
    return nfe


def nfe_for_steps(steps: int, solver: str) -> int:
    """Network evaluations of `steps` solver steps (inverse of `steps_for_nfe`)."""
    return 2 * steps - 1 if solver == "heun" else steps


def check_t_start(t_start: float, steps: int = 1) -> float:
    """`t_start` as a float in ((steps − 1)/steps, 1), or a ValueError that says why.

    t = 1 itself is excluded: an EDM-parametrised network sees σ = t/(1 − t) = ∞ there.
    """
    if isinstance(t_start, bool) or not isinstance(t_start, (int, float)) or not math.isfinite(t_start):
        raise ValueError(f"t_start must be a number in (0, 1), got {t_start!r}")
    t_start = float(t_start)
    if not 0 < t_start < 1:
        raise ValueError(f"t_start must lie in (0, 1) (t = 1 is σ = ∞ for an EDM-form network), got {t_start}")
    if steps > 1 and t_start <= (steps - 1) / steps:
        raise ValueError(f"t_start {t_start} must exceed the grid's second point {(steps - 1) / steps} "
                         f"({steps} steps)")
    return t_start
