"""Samplers: golden reproduction of the reference's RF sampler and EDM's Heun sampler on the three random
networks, NFE accounting, hand-checked steps, straightness, inversion on a closed-form flow, and errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NETWORK_CASES, load_golden, rel_err

from rfpp.nets import EDMDenoiser, EDMVelocity
from rfpp.sampling import (
    decode,
    default_grid,
    edm_heun,
    edm_sigma_steps,
    euler_step,
    heun_step,
    inversion_grid,
    invert,
    new_update,
    sample,
    straightness,
    straightness_per_sample,
    user_grid,
)

TOL = 1e-4  # tests/golden/README.md: samplers, EDM Heun and straightness, relative


# ----------------------------------------------------------------------------------------------------------------
# helpers


class Counting:
    """Wraps a velocity/denoiser, counting calls and recording the times and labels it was given."""

    def __init__(self, fn):
        self.fn, self.calls, self.times, self.labels = fn, 0, [], []

    def __call__(self, x, t, class_labels=None):
        self.calls += 1
        self.times.append(t.clone())
        self.labels.append(class_labels)
        return self.fn(x, t, class_labels)


def _run_kwargs(key: str) -> dict:
    """'heun_N5_new' → solver/nfe/update; 'euler_schedule_0.99999,0.6,0.2_new' → solver/schedule/update."""
    solver, rest = key.split("_", 1)
    if rest.startswith("schedule_"):
        _, grid, update = rest.split("_")
        return {"solver": solver, "schedule": [float(t) for t in grid.split(",")], "update": update}
    n, update = rest.split("_")
    assert n.startswith("N")
    return {"solver": solver, "nfe": int(n[1:]), "update": update}


class FirstCallCache:
    """Replays the velocity at the shared start (t₀·z1, t₀) that most golden runs begin with: saves NFE, not
    checks (the cached value is the velocity's own output on exactly that input)."""

    def __init__(self, fn):
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, x, t, class_labels=None):
        if self.key is not None and torch.equal(self.key[0], x) and torch.equal(self.key[1], t):
            return self.value.clone()
        value = self.fn(x, t, class_labels)
        if self.key is None:
            self.key, self.value = (x.clone(), t.clone()), value.clone()
        return value


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else abs(a)


@pytest.fixture(scope="module")
def teachers(golden_nets):
    """name → (velocity, denoiser, golden teacher dict) for the float64 golden networks."""
    out = {}
    for name in NETWORK_CASES:
        net, _ = golden_nets[name]
        denoiser = EDMDenoiser(net)
        out[name] = (EDMVelocity(denoiser), denoiser, load_golden(f"{name}_teacher"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# golden reproduction


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_golden_sampler_runs(teachers, name):
    velocity, _, golden = teachers[name]
    ref = golden["samplers"]
    z1, labels = ref["z1"], ref["class_labels"]
    assert len(ref["runs"]) == 8
    velocity = FirstCallCache(velocity)  # the labels are the same in every run
    for key, run in ref["runs"].items():
        kwargs = _run_kwargs(key)
        final, traj = sample(velocity, z1, class_labels=labels, return_trajectory=True, **kwargs)
        assert len(traj) == run["traj"].shape[0], key
        # the golden trajectory starts at t0·z1 (t0 = first grid point): noise=z1 reproduces it exactly
        t0 = kwargs["schedule"][0] if "schedule" in kwargs else 1 - 1e-5
        assert torch.equal(traj[0], t0 * z1), key
        assert torch.equal(run["traj"][0], t0 * z1), key
        assert rel_err(final, run["final"]) < TOL, (key, rel_err(final, run["final"]))
        assert torch.equal(final, traj[-1]), key
        for i, (mine, theirs) in enumerate(zip(traj, run["traj"], strict=True)):
            assert rel_err(mine, theirs) < TOL, (key, i, rel_err(mine, theirs))
        ref_s = float(run["straightness"])
        assert _rel(straightness(traj), ref_s) < TOL, (key, straightness(traj), ref_s)
        # the straightness function alone, on the reference's own trajectory
        assert _rel(straightness(run["traj"]), ref_s) < 1e-9, key
        assert _rel(float(straightness_per_sample(traj).mean()), straightness(traj)) < 1e-12, key


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_golden_edm_heun(teachers, name):
    _, denoiser, golden = teachers[name]
    ref = golden["edm_heun"]
    counting = Counting(denoiser)
    out = edm_heun(counting, ref["latents"], ref["num_steps"], sigma_min=ref["sigma_min"], sigma_max=ref["sigma_max"],
                   rho=ref["rho"], class_labels=ref["class_labels"])
    assert out.dtype == torch.float64 and out.shape == ref["out"].shape
    assert rel_err(out, ref["out"]) < TOL, rel_err(out, ref["out"])
    assert counting.calls == 2 * ref["num_steps"] - 1
    assert all(lab is ref["class_labels"] for lab in counting.labels)


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_golden_nets_invert_deterministically(teachers, name):
    velocity, _, golden = teachers[name]
    ref = golden["samplers"]
    images = ref["runs"]["euler_N2_new"]["final"]
    first, traj = invert(velocity, images, 1, class_labels=ref["class_labels"], return_trajectory=True)
    second = invert(velocity, images, 1, class_labels=ref["class_labels"])
    assert torch.equal(first, second)
    assert first.shape == images.shape and first.dtype == torch.float64 and torch.isfinite(first).all()
    assert len(traj) == 2 and torch.equal(traj[0], images) and torch.equal(traj[-1], first)


# ----------------------------------------------------------------------------------------------------------------
# grids and NFE accounting


def test_grids():
    assert default_grid(4) == [1 - 1e-5, 0.75, 0.5, 0.25, 0.0]
    assert default_grid(1) == [1 - 1e-5, 0.0]
    assert inversion_grid(4) == [1e-3, 0.25, 0.5, 0.75, 1.0]
    assert inversion_grid(1) == [1e-3, 1.0]
    assert user_grid([0.99999, 0.6, 0.2]) == [0.99999, 0.6, 0.2, 0.0]
    assert user_grid(torch.tensor([1.0, 0.5, 0.0])) == [1.0, 0.5, 0.0]
    sig = edm_sigma_steps(6)
    assert sig.dtype == torch.float64 and sig.shape == (7,)
    assert math.isclose(sig[0].item(), 80.0, rel_tol=1e-12) and math.isclose(sig[5].item(), 0.002, rel_tol=1e-12)
    assert sig[6].item() == 0 and (sig.diff() < 0).all()
    # ρ-schedule midpoint: σ^{1/ρ} is evenly spaced
    roots = sig[:6] ** (1 / 7)
    assert torch.allclose(roots.diff(), roots.diff()[:1].expand(5), rtol=1e-10)
    assert edm_sigma_steps(1).tolist() == [80.0, 0.0]
    assert default_grid(2, t_start=0.99) == [0.99, 0.5, 0.0]
    assert default_grid(1, 0.999) == [0.999, 0.0]


@pytest.mark.parametrize("t_start, steps, match", [
    (1.0, 1, "σ = ∞"), (0.0, 1, r"\(0, 1\)"), (float("nan"), 1, "number"), (True, 1, "number"),
    (0.5, 2, "second point 0.5"), (0.7, 4, "second point 0.75"),
])
def test_default_grid_refuses_a_bad_first_point(t_start, steps, match):
    with pytest.raises(ValueError, match=match):
        default_grid(steps, t_start)


@pytest.mark.parametrize("update", ["default", "new"])
def test_sample_starts_at_t_start(update):
    """One Euler step from t₀ with a constant field c: z₁ = t₀·z, x̂ = z₁ − t₀·c (both update rules)."""
    c = 0.25

    def const(x, t, class_labels=None):
        return torch.full_like(x, c)

    z = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for t0 in (0.99, 1 - 1e-5):
        out, traj = sample(const, z, nfe=1, update=update, t_start=t0, return_trajectory=True)
        assert torch.equal(traj[0], z * t0)
        torch.testing.assert_close(out, z * t0 - t0 * c, rtol=0, atol=1e-6)
    times = []
    sample(lambda x, t, class_labels=None: times.append(t[0].item()) or torch.zeros_like(x), z, nfe=2, t_start=0.9)
    assert times == pytest.approx([0.9, 0.5])


def _toy_velocity(x, t, class_labels=None):
    return torch.sin(x) * t.view(-1, *([1] * (x.ndim - 1))) - 0.3 * x


@pytest.mark.parametrize(("solver", "nfe", "steps"), [("euler", 1, 1), ("euler", 2, 2), ("euler", 5, 5),
                                                      ("heun", 1, 1), ("heun", 3, 2), ("heun", 7, 4)])
def test_nfe_accounting(solver, nfe, steps):
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for update in ("default", "new"):
        counting = Counting(_toy_velocity)
        _, traj = sample(counting, noise, nfe=nfe, solver=solver, update=update, return_trajectory=True)
        assert counting.calls == nfe and len(traj) == steps + 1
        assert all(t.shape == (3,) and (t == t[0]).all() for t in counting.times)
        grid = default_grid(steps)
        expected = [grid[i] for i in range(steps)] if solver == "euler" else \
            [g for i in range(steps - 1) for g in (grid[i], grid[i + 1])] + [grid[steps - 1]]
        assert [t[0].item() for t in counting.times] == pytest.approx(expected, abs=1e-15)
        counting = Counting(_toy_velocity)
        invert(counting, noise, nfe, solver=solver)
        assert counting.calls == nfe
    counting = Counting(_toy_velocity)
    sample(counting, noise, schedule=[0.9, 0.5, 0.3, 0.1], solver=solver)
    assert counting.calls == (4 if solver == "euler" else 7)


def test_edm_heun_nfe_and_exactness_on_linear_paths():
    """With D ≡ μ the σ-ODE has straight solutions x(σ) = μ + (x₀ − μ)·σ/σ_max: Heun and Euler are exact."""
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64)
    latents = torch.randn(4, 2, 3, 3, generator=gen)
    for steps in (1, 2, 5):
        counting = Counting(lambda x, sigma, labels: mu.expand_as(x))
        out, traj = edm_heun(counting, latents, steps, return_trajectory=True)
        assert counting.calls == 2 * steps - 1 and len(traj) == steps + 1
        assert torch.equal(traj[0], latents.double() * 80.0)
        assert torch.allclose(out, mu.expand_as(out), rtol=0, atol=1e-12)
        assert all(s.shape == (4,) and s.dtype == torch.float64 for s in counting.times)
    out32 = edm_heun(lambda x, sigma, labels: mu.expand_as(x), latents, 3, state_dtype=torch.float32)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), mu.expand(4, -1, -1, -1), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# step semantics by hand


def test_steps_match_hand_formulas():
    """Linear time-independent field v = a·x: one step of each solver and rule, written out by hand."""
    a, t, tn = -0.7, 0.8, 0.3
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    z1 = torch.randn(2, 5, generator=gen, dtype=torch.float64)

    def vel(y, times, labels):
        return a * y

    h = tn - t
    assert torch.allclose(euler_step(vel, x, t, tn, start=z1), x + h * a * x, rtol=0, atol=1e-14)
    assert torch.allclose(euler_step(vel, x, t, tn, start=z1, update=new_update),
                          (1 - tn) * (x - t * a * x) + tn * z1, rtol=0, atol=1e-14)
    pred = x + h * a * x
    assert torch.allclose(heun_step(vel, x, t, tn, start=z1), x + h * (a * x + a * pred) / 2, rtol=0, atol=1e-14)
    pred = (1 - tn) * (x - t * a * x) + tn * z1
    vbar = (a * x + a * pred) / 2
    assert torch.allclose(heun_step(vel, x, t, tn, start=z1, update=new_update),
                          (1 - tn) * (x - t * vbar) + tn * z1, rtol=0, atol=1e-14)
    # the last Heun step is a plain Euler step
    assert torch.equal(heun_step(vel, x, t, tn, start=z1, last=True), euler_step(vel, x, t, tn, start=z1))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_new_and_default_coincide_on_a_straight_field(solver):
    """v ≡ z − x (one pair's straight flow) from t₀ = 1: both rules give (1−t)·x + t·z at every grid point."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    grid = [1.0, 0.7, 0.45, 0.1]
    outs = {}
    for update in ("default", "new"):
        outs[update] = sample(lambda y, t, c: z - x, z, schedule=grid, solver=solver, update=update,
                              return_trajectory=True)
        final, traj = outs[update]
        for state, t in zip(traj, grid + [0.0], strict=True):
            assert torch.allclose(state, (1 - t) * x + t * z, rtol=0, atol=1e-12)
        assert torch.allclose(final, x, rtol=0, atol=1e-12)
    # on a curved field the two rules differ (so the check above has teeth); they differ by t'·(z₁ − ẑ) per
    # step, which is ~1e-5 on a first step from t₀ = 1 − 1e−5 and 0 on a last step to t' = 0, so take 3 steps
    a = sample(_toy_velocity, z, nfe=5, solver=solver, update="default")
    b = sample(_toy_velocity, z, nfe=5, solver=solver, update="new")
    assert (a - b).abs().max() > 1e-2


def test_new_rule_is_default_plus_noise_realignment():
    """(1−t')·x̂ + t'·z₁ = x + v·(t'−t) + t'·(z₁ − ẑ) with ẑ = x + (1−t)·v the predicted noise."""
    gen = torch.Generator().manual_seed(6)
    x, v, z1 = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).unbind(0)
    t, tn = 0.85, 0.4
    z_hat = x + (1 - t) * v
    assert torch.allclose(new_update(x, v, t, tn, z1), x + v * (tn - t) + tn * (z1 - z_hat), rtol=0, atol=1e-14)


def test_class_labels_dtype_and_trajectory_are_passed_through():
    noise = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    labels = torch.tensor([3, 7])
    counting = Counting(lambda x, t, c: (-x).float())  # a float32 network under a float64 state
    final, traj = sample(counting, noise, nfe=3, solver="heun", class_labels=labels, return_trajectory=True)
    assert all(lab is labels for lab in counting.labels)
    assert all(t.dtype == torch.float64 for t in counting.times)
    assert final.dtype == torch.float64 and all(s.dtype == torch.float64 for s in traj)
    assert torch.equal(traj[0], noise * (1 - 1e-5)) and traj[0] is not noise
    final.add_(1.0)
    assert not torch.equal(final, traj[-1])  # the trajectory holds clones
    lin = torch.nn.Linear(4, 4).double()
    out = sample(lambda x, t, c: lin(x), noise, nfe=2)
    assert not out.requires_grad


# ----------------------------------------------------------------------------------------------------------------
# inversion on a closed-form flow


def _gaussian_flow(mu: torch.Tensor, s: float):
    """Exact RF velocity of data N(μ, s²I) with noise N(0, I): x_t = (1−t)·μ + σ_t·ε, σ_t² = (1−t)²s² + t²."""

    def velocity(y, t, class_labels=None):
        t = t.view(-1, *([1] * (y.ndim - 1)))
        var = (1 - t) ** 2 * s**2 + t**2
        return (t - (1 - t) * s**2) / var * (y - (1 - t) * mu) - mu

    def state(eps, t):
        return (1 - t) * mu + math.sqrt((1 - t) ** 2 * s**2 + t**2) * eps

    return velocity, state


def test_invert_then_decode_recovers_images_on_a_closed_form_flow():
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    velocity, state = _gaussian_flow(mu, 0.5)
    images = state(eps, 1e-3)  # the image's point at t = 1e-3
    noise = invert(velocity, images, 801, solver="heun")  # (Heun's last step is Euler: O(h²) overall)
    assert rel_err(noise, eps) < 1e-5, rel_err(noise, eps)  # ε is the noise at t = 1 (σ_1 = 1)
    back = decode(velocity, noise, 801, solver="heun", update="default")
    assert rel_err(back, state(eps, 0.0)) < 2e-5, rel_err(back, state(eps, 0.0))
    # Euler converges at first order: 4× the steps, about ¼ of the error
    errs = [rel_err(invert(velocity, images, n), eps) for n in (50, 200)]
    assert 3.0 < errs[0] / errs[1] < 5.0, errs
    # and Heun beats Euler at equal NFE
    assert rel_err(invert(velocity, images, 201, solver="heun"), eps) < errs[1] / 10


def test_new_rule_needs_a_straight_flow():
    """`new` re-noises x̂ with z₁, i.e. adds t'·(z₁ − ẑ) to the ODE step: exact on straight flows, but not a
    consistent ODE solver on curved ones (it is meant for near-straight 2-RF students and few steps)."""
    gen = torch.Generator().manual_seed(7)
    mu = torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    straight, _ = _gaussian_flow(mu, 0.0)  # point-mass data: v = (x_t − μ)/t, straight paths
    for update in ("default", "new"):
        assert torch.allclose(decode(straight, eps, 2, update=update), mu.expand_as(eps), rtol=0, atol=1e-12)
    curved, state = _gaussian_flow(mu, 0.5)
    target = state(eps, 0.0)
    assert rel_err(decode(curved, eps, 401, solver="heun", update="default"), target) < 1e-4
    assert rel_err(decode(curved, eps, 401, solver="heun", update="new"), target) > 0.1


# ----------------------------------------------------------------------------------------------------------------
# straightness


def test_straightness_of_a_straight_trajectory_is_zero():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64).unbind(0)
    a, b = a.unsqueeze(0).repeat(2, 1, 1, 1), b.unsqueeze(0).repeat(2, 1, 1, 1)
    traj = [a + (b - a) * i / 6 for i in range(7)]
    assert straightness(traj) == pytest.approx(0.0, abs=1e-24)
    assert straightness_per_sample(torch.stack(traj)).abs().max() < 1e-24


def test_straightness_of_a_bent_trajectory_by_hand():
    # one sample, two elements: (0,0) → (1,0) → (1,1). Δ = ½, x₀ − x₂ = (−1,−1);
    # steps/Δ = (−2,0), (0,−2); deviations (−1,1), (1,−1); squared means 1 and 1 → S = 1.
    traj = [torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])]
    assert straightness(traj) == pytest.approx(1.0, rel=1e-12)
    assert straightness(torch.stack(traj)) == pytest.approx(1.0, rel=1e-12)
    # a second sample out and back along one axis: 0 → 1 → 0, base 0, steps/Δ = −2, 2 → S = 4
    batch = [torch.cat([s, torch.tensor([[v, v]])]) for s, v in zip(traj, (0.0, 1.0, 0.0), strict=True)]
    per = straightness_per_sample(batch)
    assert per.tolist() == pytest.approx([1.0, 4.0], rel=1e-12)
    assert straightness(batch) == pytest.approx(2.5, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# errors


_NOISE = torch.zeros(2, 1, 2, 2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"nfe": 2, "solver": "heun"}, "odd"),
    ({"nfe": 0}, "at least 1"),
    ({"nfe": -3}, "at least 1"),
    ({"nfe": 2.0}, "integer"),
    ({"nfe": True}, "integer"),
    ({}, "exactly one"),
    ({"nfe": 2, "schedule": [0.9, 0.1]}, "exactly one"),
    ({"schedule": [0.5, 0.9]}, "descending"),
    ({"schedule": [0.9, 0.5, 0.5]}, "descending"),
    ({"schedule": [1.5, 0.5]}, r"\(0, 1\]"),
    ({"schedule": [0.9, -0.1]}, r"\(0, 1\]"),
    ({"schedule": [0.9, 0.0, 0.0]}, r"\(0, 1\]"),
    ({"schedule": [0.9, float("nan")]}, "non-finite"),
    ({"schedule": []}, "empty"),
    ({"schedule": [0.0]}, "at least one time"),
    ({"schedule": "0.9,0.1"}, "sequence"),
    ({"schedule": torch.ones(2, 2)}, "one-dimensional"),
    ({"nfe": 1, "solver": "rk4"}, "unknown solver"),
    ({"nfe": 1, "update": "fancy"}, "unknown update"),
])
def test_sample_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(_toy_velocity, _NOISE, **kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match="callable"):
        sample(None, _NOISE, nfe=1)
    with pytest.raises(ValueError, match="Tensor"):
        sample(_toy_velocity, [[0.0]], nfe=1)
    with pytest.raises(ValueError, match="floating"):
        sample(_toy_velocity, torch.zeros(2, 3, dtype=torch.long), nfe=1)
    with pytest.raises(ValueError, match="batch"):
        sample(_toy_velocity, torch.zeros(()), nfe=1)
    with pytest.raises(ValueError, match="odd"):
        invert(_toy_velocity, _NOISE, 4, solver="heun")
    with pytest.raises(ValueError, match="t_start"):
        invert(_toy_velocity, _NOISE, 4, t_start=0.5)
    with pytest.raises(ValueError, match="num_steps"):
        edm_heun(lambda x, s, c: x, _NOISE, 0)
    with pytest.raises(ValueError, match="sigma_min"):
        edm_heun(lambda x, s, c: x, _NOISE, 3, sigma_min=100.0)
    with pytest.raises(ValueError, match="rho"):
        edm_heun(lambda x, s, c: x, _NOISE, 3, rho=0)
    with pytest.raises(ValueError, match="state_dtype"):
        edm_heun(lambda x, s, c: x, _NOISE, 3, state_dtype=torch.float16)
    with pytest.raises(ValueError, match="at least two states"):
        straightness([torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="differ in shape"):
        straightness([torch.zeros(2, 3), torch.zeros(2, 4)])
