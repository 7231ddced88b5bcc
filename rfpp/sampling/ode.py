"""Rectified-flow ODE samplers: Euler and Heun on a time grid, with the plain or the paper's update.

Conventions (docs/conventions.md, "Sampling and NFE"): x_t = (1−t)·x + t·z, t = 1 noise, t = 0 data; the
velocity is any callable `velocity(x_t, t, class_labels) → v` with x_t of shape (N, …) and t of shape
(N,). Predicted data x̂ = x_t − t·v.

Update rules (one step from t to t'):
- `default`: the plain ODE step x ← x + v·(t' − t);
- `new` (the paper's): x_{t'} = (1 − t')·x̂ + t'·z₁ with z₁ the start state; it re-noises the data
  prediction with the start state instead of integrating.

Solvers (k-diffusion style: small step functions, dispatched by name through `SOLVER_STEPS`):
- `euler`: one velocity evaluation per step;
- `heun`: predictor with the chosen update rule, velocity at t' on the prediction, then the step
  again with the average of the two velocities; the last step of a run is a plain Euler step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rfpp.sampling.grids import (
    SOLVERS,
    T_START,
    default_grid,
    inversion_grid,
    steps_for_nfe,
    user_grid,
)
from rfpp.sampling.kinds import UPDATES

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
UpdateRule = Callable[[torch.Tensor, torch.Tensor, float, float, torch.Tensor], torch.Tensor]


def default_update(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, start: torch.Tensor) -> torch.Tensor:
    """Plain ODE step x + v·(t' − t); `start` is unused."""
    return x + v * (t_next - t)


def new_update(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, start: torch.Tensor) -> torch.Tensor:
    """The paper's step: x̂ = x − t·v, then (1 − t')·x̂ + t'·start."""
    return (x - v * t) * (1 - t_next) + start * t_next


UPDATE_RULES: dict[str, UpdateRule] = {"default": default_update, "new": new_update}
assert tuple(UPDATE_RULES) == UPDATES


def _times(t: float, like: torch.Tensor) -> torch.Tensor:
    """Time t as a (N,) tensor on `like`'s device, at least float32."""
    dtype = torch.promote_types(like.dtype, torch.float32) if like.is_floating_point() else torch.float32
    return torch.full((like.shape[0],), t, dtype=dtype, device=like.device)


def _call(velocity: Velocity, x: torch.Tensor, t: float, class_labels: torch.Tensor | None) -> torch.Tensor:
    """v(x, t) cast back to the state's dtype (so a bf16/float32 network keeps a float64 state float64)."""
    return velocity(x, _times(t, x), class_labels).to(x.dtype)


def euler_step(velocity: Velocity, x: torch.Tensor, t: float, t_next: float, *, start: torch.Tensor,
               update: UpdateRule = default_update, class_labels: torch.Tensor | None = None,
               last: bool = False) -> torch.Tensor:
    """One Euler step from t to t' (1 NFE). `last` is accepted for a uniform signature."""
    return update(x, _call(velocity, x, t, class_labels), t, t_next, start)


def heun_step(velocity: Velocity, x: torch.Tensor, t: float, t_next: float, *, start: torch.Tensor,
              update: UpdateRule = default_update, class_labels: torch.Tensor | None = None,
              last: bool = False) -> torch.Tensor:
    """One Heun step from t to t' (2 NFE; 1 NFE and a plain Euler step when `last`).

    Predictor: the update rule with v(x, t). Corrector: v' = v(predicted, t'), then the update rule
    again from x with (v + v')/2 (for `new`, x̂ is recomputed from the averaged velocity).
    """
    v = _call(velocity, x, t, class_labels)
    if not last:
        predicted = update(x, v, t, t_next, start)
        v = (v + _call(velocity, predicted, t_next, class_labels)) / 2
    return update(x, v, t, t_next, start)


SOLVER_STEPS: dict[str, Callable[..., torch.Tensor]] = {"euler": euler_step, "heun": heun_step}
assert tuple(SOLVER_STEPS) == SOLVERS


def _check_state(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    return x


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


@torch.no_grad()
def integrate(velocity: Velocity, start: torch.Tensor, grid: Sequence[float], solver: str = "euler",
              update: str = "default", class_labels: torch.Tensor | None = None, return_trajectory: bool = False,
              progress: bool = False, desc: str = "sampling") -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate the velocity ODE from `start` (the state at grid[0]) along `grid` (either direction).

    The update rule `new` re-noises with `start`. The last step is always a plain Euler step for Heun.
    Returns the final state, or (final, trajectory) with trajectory = [start, x_1, …, x_final]
    (len(grid) points, detached clones).
    """
    if not callable(velocity):
        raise ValueError(f"velocity must be callable v(x_t, t, class_labels), got {type(velocity).__name__}")
    _check_state("start state", start)
    step = SOLVER_STEPS[_check_choice("solver", solver, SOLVERS)]
    rule = UPDATE_RULES[_check_choice("update", update, tuple(UPDATE_RULES))]
    grid = [float(t) for t in grid]
    if len(grid) < 2:
        raise ValueError(f"a time grid needs at least two points, got {grid}")
    start = start.detach()
    x = start
    trajectory = [start.clone()] if return_trajectory else None
    n_steps = len(grid) - 1
    for i in _progress(range(n_steps), progress, desc):
        x = step(velocity, x, grid[i], grid[i + 1], start=start, update=rule, class_labels=class_labels,
                 last=i == n_steps - 1)
        if trajectory is not None:
            trajectory.append(x.detach().clone())
    return (x, trajectory) if trajectory is not None else x


@torch.no_grad()
def sample(velocity: Velocity, noise: torch.Tensor, nfe: int | None = None,
           schedule: Sequence[float] | torch.Tensor | None = None, solver: str = "euler", update: str = "new",
           class_labels: torch.Tensor | None = None, return_trajectory: bool = False,
           progress: bool = False, t_start: float = T_START) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Generate data from noise z (shape (N, C, H, W) or any (N, …)) by integrating t = 1 → 0.

    Exactly one of `nfe` / `schedule`:
    - `nfe`: default grid t_i = i/S, i = S … 0, first point `t_start` (1 − 1e−5, the reference's), with
      S = nfe steps for Euler and S = (nfe + 1)/2 for Heun (nfe odd);
    - `schedule`: a descending list/tensor of times in (0, 1] (0 appended when absent); Heun then
      spends 2·steps − 1 NFE.
    The start state is z₁ = t₀·z with t₀ the grid's first point; `update="new"` re-noises with z₁.
    `class_labels` go to the velocity unchanged. The state keeps `noise`'s dtype.
    Returns the final state, or (final, trajectory) with trajectory a list of steps + 1 states,
    index 0 the start z₁.
    """
    noise = _check_state("noise", noise)
    _check_choice("solver", solver, SOLVERS)
    _check_choice("update", update, tuple(UPDATE_RULES))
    if (nfe is None) == (schedule is None):
        raise ValueError("give exactly one of nfe (default grid) or schedule (a user time grid)")
    grid = default_grid(steps_for_nfe(nfe, solver), t_start) if schedule is None else user_grid(schedule)
    return integrate(velocity, noise * grid[0], grid, solver=solver, update=update, class_labels=class_labels,
                     return_trajectory=return_trajectory, progress=progress, desc=f"{solver} sampling")


def decode(velocity: Velocity, noise: torch.Tensor, nfe: int | None = None,
           schedule: Sequence[float] | torch.Tensor | None = None, solver: str = "euler", update: str = "new",
           class_labels: torch.Tensor | None = None, return_trajectory: bool = False,
           progress: bool = False, t_start: float = T_START) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Decode noise (e.g. from `invert`) back to data: exactly `sample`."""
    return sample(velocity, noise, nfe=nfe, schedule=schedule, solver=solver, update=update,
                  class_labels=class_labels, return_trajectory=return_trajectory, progress=progress,
                  t_start=t_start)


@torch.no_grad()
def invert(velocity: Velocity, images: torch.Tensor, nfe: int, class_labels: torch.Tensor | None = None,
           solver: str = "euler", return_trajectory: bool = False, t_start: float = 1e-3,
           progress: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Map images to their noise by integrating the ODE forward, t = t_start → 1 (the paper's inversion).

    `images` are taken as the state at t_start (the reference first mixes in a little noise,
    (1 − 1e−3)·x + 1e−3·ε; do that beforehand if wanted). Grid t_i = i/S for i = 0 … S − 1 with the
    first point t_start, then 1; S steps from `nfe` as in `sample`. Plain ODE updates only (the `new`
    rule is for sampling). Returns the noise at t = 1, or (noise, trajectory).
    """
    images = _check_state("images", images)
    grid = inversion_grid(steps_for_nfe(nfe, solver), t_start)
    return integrate(velocity, images, grid, solver=solver, update="default", class_labels=class_labels,
                     return_trajectory=return_trajectory, progress=progress, desc=f"{solver} inversion")
