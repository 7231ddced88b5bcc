"""Timestep samplers: exact distributions (Kolmogorov–Smirnov against the closed-form CDF), range,
reproducibility from an explicit generator, and clear errors."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from rfpp.timesteps import T_MAX, T_MIN, cdf, density, sample_timesteps


@pytest.mark.parametrize("kind", ["u_shaped", "uniform", "logit_normal"])
def test_matches_exact_cdf(kind):
    t = sample_timesteps(100_000, kind, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = stats.kstest(t.numpy(), lambda x: cdf(torch.from_numpy(x), kind).numpy())
    assert result.pvalue > 1e-3, result


def test_ks_detects_a_wrong_distribution():
    """The KS check has power: uniform draws are rejected as U-shaped (so the test above can fail)."""
    t = sample_timesteps(100_000, "uniform", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert stats.kstest(t.numpy(), lambda x: cdf(torch.from_numpy(x), "u_shaped").numpy()).pvalue < 1e-6


@pytest.mark.parametrize("a", [1.0, 4.0, 10.0])
def test_u_shaped_for_several_a(a):
    t = sample_timesteps(50_000, "u_shaped", a=a, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert stats.kstest(t.numpy(), lambda x: cdf(torch.from_numpy(x), "u_shaped", a=a).numpy()).pvalue > 1e-3


def test_density_integrates_to_one_and_is_u_shaped():
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    p = density(x, "u_shaped", a=4.0)
    assert abs(torch.trapezoid(p, x).item() - 1) < 1e-8
    assert p[0] > p[100_000] and p[-1] > p[100_000]
    # d/dt CDF = density (on the unsqueezed scale the squeeze changes it by 1e-5 only)
    mid = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    h = 1e-6
    num = (cdf(mid + h) - cdf(mid - h)) / (2 * h)
    assert torch.allclose(num, density(mid) / (T_MAX - T_MIN), rtol=1e-4)


@pytest.mark.parametrize("kind", ["u_shaped", "uniform", "logit_normal"])
def test_range_shape_dtype_and_reproducibility(kind):
    a = sample_timesteps(4096, kind, generator=torch.Generator().manual_seed(7))
    b = sample_timesteps(4096, kind, generator=torch.Generator().manual_seed(7))
    c = sample_timesteps(4096, kind, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4096,) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= T_MIN and a.max() <= T_MAX


def test_squeeze_maps_endpoints():
    """The affine squeeze is applied after the draw (the reference's order)."""
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(200_000, "u_shaped", a=30.0, generator=g, dtype=torch.float64)
    assert t.min() >= T_MIN and t.max() <= T_MAX
    assert t.min() < 1e-4 and t.max() > 1 - 1e-4


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown timestep distribution 'beta'"):
        sample_timesteps(4, "beta")
    with pytest.raises(ValueError, match="a > 0"):
        sample_timesteps(4, "u_shaped", a=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        sample_timesteps(-1)
