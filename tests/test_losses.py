"""Reflow losses: golden pseudo-Huber and combinations, pointwise losses by hand, LPIPS's recipe, the VGG16 LPIPS
(random trunk in a temporary TORCH_HOME, cross-checked against the lpips package) and the missing-weights error."""

from __future__ import annotations

import copy
import importlib.metadata
import math
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import load_golden, rel_err
from torch import nn
from weight_files import write_random_vgg16

from rfpp.losses import (
    KINDS,
    LPIPS,
    VGG16_WEIGHTS_URL,
    FeatureLPIPS,
    PerceptualWeightsNotFoundError,
    ReflowLoss,
    combine,
    huber_c,
    l2,
    l2_squared,
    pseudo_huber,
)

VGG_FILE = "vgg16-397923af.pth"


# ----------------------------------------------------------------------------------------------------------------
# golden vectors and pointwise losses


@pytest.fixture(scope="module")
def golden() -> dict:
    return load_golden("losses")


def test_pseudo_huber_matches_golden(golden):
    pred, target = golden["pred"], golden["target"]
    d = math.prod(pred.shape[1:])
    assert huber_c(d) == pytest.approx(golden["huber_c"], rel=1e-12)
    out = pseudo_huber(pred, target)
    assert out.shape == (pred.shape[0],) and out.dtype == torch.float64
    assert rel_err(out, golden["pseudo_huber"]) < 1e-12
    assert rel_err(pseudo_huber(pred, target, c=golden["huber_c"]), golden["pseudo_huber"]) < 1e-12


def test_combinations_match_golden(golden):
    t, lp = golden["t"], golden["lpips"]
    ph = pseudo_huber(golden["pred"], golden["target"])
    assert rel_err(combine("lpips-huber", ph, lp, t), golden["lpips_huber"]) < 1e-12
    assert rel_err(combine("lpips-huber-1/t", ph, lp, t), golden["lpips_huber_inv_t"]) < 1e-12
    assert rel_err(combine("lpips-huber", golden["pseudo_huber"], lp, t), golden["lpips_huber"]) < 1e-12
    assert torch.equal(combine("pseudo-huber", huber=ph), ph)
    assert torch.equal(combine("lpips", lpips=lp), lp)


class _StandIn(nn.Module):
    """A perceptual stand-in returning fixed values and recording what it was called with."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), y.detach().clone()))
        return self.values


@pytest.mark.parametrize("kind,key", [("lpips-huber", "lpips_huber"), ("lpips-huber-1/t", "lpips_huber_inv_t"),
                                      ("pseudo-huber", "pseudo_huber"), ("lpips", "lpips")])
def test_reflow_loss_reproduces_golden(golden, kind, key):
    pred, target, t = golden["pred"], golden["target"], golden["t"]
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(pred.shape, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(pred.shape, generator=g, dtype=torch.float64)
    stand_in = _StandIn(golden["lpips"])
    loss, terms = ReflowLoss(kind, perceptual=stand_in if "lpips" in kind else None)(pred, target, x_t, x0, t)
    assert loss.shape == (pred.shape[0],)
    assert rel_err(loss, golden[key]) < 1e-12
    expected_terms = {"lpips-huber": {"pseudo_huber", "lpips"}, "lpips-huber-1/t": {"pseudo_huber", "lpips"},
                      "pseudo-huber": {"pseudo_huber"}, "lpips": {"lpips"}}[kind]
    assert set(terms) == expected_terms
    for name in terms:
        assert rel_err(terms[name], golden[name]) < 1e-12
    if "lpips" in kind:  # the perceptual term compares predicted data x̂ = x_t − t·v̂ with the data x0
        (x_hat, x_ref), = stand_in.calls
        assert torch.allclose(x_hat, x_t - t.view(-1, 1, 1, 1) * pred, rtol=0, atol=1e-12)
        assert torch.equal(x_ref, x0)


def _sq_sums(pred: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, int]:
    p, q = pred.double().numpy(), target.double().numpy()
    d = int(np.prod(p.shape[1:]))
    return np.array([float(((p[i] - q[i]) ** 2).sum()) for i in range(p.shape[0])]), d


def test_pointwise_losses_by_hand():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64)
    target = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64) * 0.1
    sq, d = _sq_sums(pred, target)
    np.testing.assert_allclose(l2_squared(pred, target).numpy(), sq / d, rtol=1e-13)
    np.testing.assert_allclose(l2(pred, target).numpy(), np.sqrt(sq / d), rtol=1e-13)
    c_ref, c_ict = 0.00054 * d, 0.00054 * math.sqrt(d)
    np.testing.assert_allclose(pseudo_huber(pred, target).numpy(), (np.sqrt(sq + c_ref**2) - c_ref) / d, rtol=1e-12)
    np.testing.assert_allclose(pseudo_huber(pred, target, c_mode="ict").numpy(), (np.sqrt(sq + c_ict**2) - c_ict) / d,
                               rtol=1e-12)
    np.testing.assert_allclose(pseudo_huber(pred, target, c=0.7).numpy(), (np.sqrt(sq + 0.49) - 0.7) / d, rtol=1e-12)
    # the two modes really differ; identical inputs give exactly 0
    assert not torch.allclose(pseudo_huber(pred, target), pseudo_huber(pred, target, c_mode="ict"))
    assert torch.equal(pseudo_huber(pred, pred), torch.zeros(4, dtype=torch.float64))
    # float32 and bf16 inputs are reduced in (at least) float32
    assert pseudo_huber(pred.bfloat16(), target.bfloat16()).dtype == torch.float32
    np.testing.assert_allclose(l2(pred.float(), target.float()).numpy(), np.sqrt(sq / d), rtol=1e-5)


@pytest.mark.parametrize("kind,fn", [("l2", l2), ("l2-squared", l2_squared)])
def test_reflow_loss_l2_kinds(kind, fn):
    g = torch.Generator().manual_seed(1)
    v_pred, v, x_t, x0 = (torch.randn(3, 3, 8, 8, generator=g) for _ in range(4))
    t = torch.rand(3, generator=g)
    loss, terms = ReflowLoss(kind)(v_pred, v, x_t, x0, t)
    assert torch.equal(loss, fn(v_pred, v))
    assert list(terms) == [kind.replace("-", "_")]


def test_errors_are_clear():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="unknown loss kind 'l1'; valid kinds: " + ", ".join(KINDS).replace("/", ".")):
        ReflowLoss("l1")
    with pytest.raises(ValueError, match="unknown loss kind"):
        combine("huber", x[:, 0, 0, 0], x[:, 0, 0, 0], x[:, 0, 0, 0] + 0.5)
    with pytest.raises(ValueError, match="needs a perceptual network"):
        ReflowLoss("lpips-huber")
    with pytest.raises(ValueError, match="unknown huber_c_mode"):
        ReflowLoss("pseudo-huber", huber_c_mode="edm")
    with pytest.raises(ValueError, match="unknown c_mode"):
        pseudo_huber(x, x, c_mode="edm")
    with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(2, 3, 4, 4\) and"):
        pseudo_huber(x, torch.zeros(2, 3, 4, 5))
    loss = ReflowLoss("pseudo-huber")
    with pytest.raises(ValueError, match="v_pred and v_target must have the same shape"):
        loss(x, torch.zeros(2, 1, 4, 4), x, x, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="v_pred and x0 must have the same shape"):
        loss(x, x, x, torch.zeros(3, 3, 4, 4), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="one time per sample"):
        loss(x, x, x, x, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="must all have shape"):
        combine("lpips-huber", x[:, 0, 0, 0], x[:1, 0, 0, 0], x[:, 0, 0, 0])


# ----------------------------------------------------------------------------------------------------------------
# LPIPS's recipe on a pluggable feature network


class TinyNet(nn.Module):
    """A small feature network: images → two tanh feature maps (a dropout checks that eval mode is kept)."""

    name = "tiny-test-net"

    def __init__(self, in_ch: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = torch.tanh(self.c1(x))
        return [h1, torch.tanh(self.c2(self.drop(h1)))]


def _recipe_by_hand(fx: list[torch.Tensor], fy: list[torch.Tensor], weights: list[np.ndarray] | None) -> np.ndarray:
    total = np.zeros(fx[0].shape[0])
    for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
        a, b = a.double().numpy(), b.double().numpy()
        for n in range(a.shape[0]):
            for h in range(a.shape[2]):
                for w in range(a.shape[3]):
                    u, v = a[n, :, h, w], b[n, :, h, w]
                    du = u / (math.sqrt(float((u * u).sum())) + 1e-10) - v / (math.sqrt(float((v * v).sum())) + 1e-10)
                    wt = np.ones_like(du) if weights is None else weights[i]
                    total[n] += float((wt * du * du).sum()) / (a.shape[2] * a.shape[3])
    return total


@pytest.mark.parametrize("weighted", [False, True])
def test_feature_lpips_recipe_by_hand(weighted):
    torch.manual_seed(0)
    net = TinyNet().double()
    weights = [np.abs(np.random.default_rng(i).normal(size=c)) for i, c in enumerate((4, 6))] if weighted else None
    metric = FeatureLPIPS(net, weights=[torch.from_numpy(w).view(1, -1, 1, 1) for w in weights] if weighted else None)
    g = torch.Generator().manual_seed(2)
    x, y = (torch.rand(3, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2))
    out = metric(x, y)
    assert out.shape == (3,) and out.dtype == torch.float64
    expected = _recipe_by_hand(net(x), net(y), weights)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    assert torch.equal(metric(x, x), torch.zeros(3, dtype=torch.float64))
    assert metric.describe() == "feature-lpips(tiny-test-net)"
    assert FeatureLPIPS(TinyNet(), name="digits-classifier").describe() == "feature-lpips(digits-classifier)"


def test_feature_lpips_rejects_bad_weights_and_outputs():
    with pytest.raises(ValueError, match="non-negative"):
        FeatureLPIPS(TinyNet(), weights=[torch.ones(4), -torch.ones(6)])
    x = torch.zeros(2, 3, 6, 6)
    with pytest.raises(ValueError, match="2 weight tensors for 2 feature maps|channels"):
        FeatureLPIPS(TinyNet(), weights=[torch.ones(4), torch.ones(5)])(x, x)
    with pytest.raises(ValueError, match="1 weight tensors for 2 feature maps"):
        FeatureLPIPS(TinyNet(), weights=[torch.ones(4)])(x, x)
    with pytest.raises(TypeError, match="list of feature maps"):
        FeatureLPIPS(nn.Identity())(x, x)


def test_reflow_loss_gradients_frozen_net_and_eval_mode():
    torch.manual_seed(0)
    net = TinyNet().double()
    loss_fn = ReflowLoss("lpips-huber-1/t", perceptual=FeatureLPIPS(net))
    loss_fn.train()  # e.g. a parent module switched to training mode: the perceptual net stays frozen, in eval
    assert not net.training and not loss_fn.training
    assert all(not p.requires_grad for p in net.parameters())
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * z
    v_pred = (z - x0 + 0.1 * torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss, terms = loss_fn(v_pred, z - x0, x_t, x0, t)
    assert torch.equal(loss, loss_fn(v_pred, z - x0, x_t, x0, t)[0])  # dropout inactive: deterministic
    expected = (1 - t) * terms["pseudo_huber"] + terms["lpips"] / t
    assert torch.allclose(loss.detach(), expected, rtol=1e-12, atol=0)
    assert not any(v.requires_grad for v in terms.values())
    loss.mean().backward()
    assert v_pred.grad is not None and torch.isfinite(v_pred.grad).all() and v_pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    # the gradient is the true one: directional finite differences in float64
    for seed in (0, 1):
        direction = torch.randn(v_pred.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        with torch.no_grad():
            f_plus, f_minus = (loss_fn(v_pred + s * 1e-6 * direction, z - x0, x_t, x0, t)[0].mean() for s in (1, -1))
        numeric = float(f_plus - f_minus) / 2e-6
        assert numeric == pytest.approx(float((v_pred.grad * direction).sum()), rel=1e-6)


def test_feature_lpips_runs_the_targets_without_autograd():
    """Training needs d/dx̂ only: the targets pass the network with autograd off (no backward through their half
    of the batch, none of their activations kept), and value and gradient equal the one-pass [x; y] result."""
    torch.manual_seed(0)
    net = TinyNet().double()
    lp = FeatureLPIPS(net)
    calls: list[tuple[int, bool]] = []
    net.register_forward_hook(lambda mod, inp, out: calls.append((inp[0].shape[0], torch.is_grad_enabled())))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 6, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randn(3, 3, 6, 6, generator=g, dtype=torch.float64)
    split = lp(x, y)
    assert calls == [(3, True), (3, False)]
    (grad,) = torch.autograd.grad(split.sum(), x)
    calls.clear()
    y_grad = y.clone().requires_grad_(True)  # both need a gradient: one pass over [x; y], as before
    joint = lp(x, y_grad)
    assert calls == [(6, True)]
    (grad_joint,) = torch.autograd.grad(joint.sum(), x)
    torch.testing.assert_close(split, joint, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, grad_joint, rtol=1e-12, atol=1e-15)
    calls.clear()
    with torch.no_grad():  # evaluation: one pass
        torch.testing.assert_close(lp(x, y), split.detach(), rtol=1e-12, atol=0)
    assert calls == [(6, False)]


def test_feature_lpips_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    metric = FeatureLPIPS(TinyNet())
    g = torch.Generator().manual_seed(4)
    x, y = (torch.rand(3, 3, 8, 8, generator=g) * 2 - 1 for _ in range(2))
    ref = metric(x, y)
    cl = copy.deepcopy(metric).to(memory_format=torch.channels_last)
    out_cl = cl(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf = metric(x, y)
    assert out_bf.dtype == torch.float32 and torch.isfinite(out_bf).all()
    torch.testing.assert_close(out_bf, ref, rtol=5e-2, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# VGG16 LPIPS with a random trunk in a temporary TORCH_HOME


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a random-weight torchvision VGG16 state dict under the real file name.

    torch.hub verifies the SHA-256 prefix of the name (check_hash=True, as torchvision) only when it downloads;
    a file already in the cache is loaded as is, exactly as for a user who placed the real file there by hand.
    """
    home = tmp_path_factory.mktemp("torch_home")
    path, state = write_random_vgg16(home)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    del state
    yield home, features
    path.unlink()


@pytest.fixture(scope="module")
def vgg_lpips(torch_home):
    """LPIPS modules built from the cache: {"avg": the default (avg pooling, 224), "max64": max pooling resized to
    64 (recipe cross-check), "avg16": avg pooling resized to 16 (cheap gradient/bf16 checks on two CPU cores)}."""
    home, _ = torch_home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        return {"avg": LPIPS(), "max64": LPIPS(pool="max", size=64), "avg16": LPIPS(size=16)}


@pytest.fixture(scope="module")
def pairs():
    """Three pairs of 16×16 images in [−1, 1]: (x0, x0), (x1, y1), (y1, x1)."""
    g = torch.Generator().manual_seed(7)
    x0, x1 = (torch.rand(3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
    y1 = (x1 + 0.4 * torch.randn(3, 16, 16, generator=g)).clamp(-1, 1)
    return torch.stack([x0, x1, y1]), torch.stack([x0, y1, x1])


@pytest.fixture(scope="module")
def lpips_reference(torch_home):
    """The lpips package's own LPIPS (max pooling) with the same random trunk: pnet_rand=True builds a random
    torchvision VGG16 (no download), then torchvision's "features.<i>.*" go into its "slice<k>.<i>.*"."""
    import lpips as lpips_pkg

    _, features = torch_home
    with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision's deprecated vgg16(pretrained=False)
        warnings.simplefilter("ignore", UserWarning)
        ref = lpips_pkg.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    trunk = {key: features["features." + key.split(".", 1)[1]] for key in ref.net.state_dict()}
    ref.net.load_state_dict(trunk, strict=True)
    return ref.eval()


def _with_avg_pooling(ref: nn.Module) -> nn.Module:
    ref = copy.deepcopy(ref)
    for part in (ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
        for name, m in list(part.named_children()):
            if isinstance(m, nn.MaxPool2d):
                setattr(part, name, nn.AvgPool2d(2, 2))
    return ref


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_vgg_lpips_loads_trunk_from_torch_home_and_lpips_weights(vgg_lpips, torch_home):
    import lpips as lpips_pkg

    _, features = torch_home
    for module in vgg_lpips.values():
        trunk = module.net.features.state_dict()
        assert set(trunk) == {k.removeprefix("features.") for k in features}
        assert all(torch.equal(trunk[k.removeprefix("features.")], v) for k, v in features.items())
        assert all(not p.requires_grad for p in module.parameters()) and not module.net.training
    avg, mx = vgg_lpips["avg"], vgg_lpips["max64"]
    assert [type(m) for m in avg.net.features if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))] == [nn.AvgPool2d] * 4
    assert [type(m) for m in mx.net.features if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))] == [nn.MaxPool2d] * 4
    # the lpips package's learned linear weights, exactly as stored in its file
    stored = torch.load(Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                        weights_only=True)
    lin = [stored[f"lin{i}.model.1.weight"].reshape(-1) for i in range(5)]
    assert [w.numel() for w in lin] == [64, 128, 256, 512, 512]
    assert all(torch.equal(a, b) for a, b in zip(avg.layer_weights(), lin, strict=True))
    version = importlib.metadata.version("lpips")
    assert avg.describe() == f"lpips-vgg16-avgpool (lpips {version} linear weights)"
    assert mx.describe() == f"lpips-vgg16-maxpool (lpips {version} linear weights), resized to 64"
    assert "perceptual: lpips-vgg16-avgpool" in ReflowLoss("lpips-huber", perceptual=avg).describe()


def test_input_mapping_equals_lpips_scaling_layer(vgg_lpips, pairs):
    """[−1, 1] → 224×224 → [0, 1] → ImageNet mean/std (ours, the paper's) = the lpips ScalingLayer on [−1, 1]."""
    from lpips.lpips import ScalingLayer

    a, _ = pairs
    ours = vgg_lpips["avg"].net.preprocess(a)
    torch.testing.assert_close(ours, ScalingLayer()(_resize(a, 224)), rtol=1e-5, atol=1e-5)
    # ... and not the ScalingLayer applied to [0, 1] images (lpips.LPIPS expects [−1, 1] unless normalize=True)
    assert (ours - ScalingLayer()(_resize(a * 0.5 + 0.5, 224))).abs().max() > 0.5


def test_vgg_lpips_default_matches_lpips_package_with_avg_pooling(vgg_lpips, pairs, lpips_reference):
    """The default module (avg pooling, 224) on one pair equals lpips.LPIPS with its pools made 2×2 averages."""
    a, b = (p[1:2] for p in pairs)
    with torch.no_grad():
        ours = vgg_lpips["avg"](a, b)
        theirs = _with_avg_pooling(lpips_reference)(_resize(a, 224), _resize(b, 224)).reshape(-1)
    assert ours.shape == (1,) and ours.dtype == torch.float32 and float(ours) > 1e-3
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)


def test_vgg_lpips_max_pooling_matches_lpips_package(vgg_lpips, pairs, lpips_reference):
    """Max pooling is the lpips package's own metric: equal on every pair (same resize, here to 64); avg differs."""
    a, b = pairs
    with torch.no_grad():
        ours = vgg_lpips["max64"](a, b)
        theirs = lpips_reference(_resize(a, 64), _resize(b, 64)).reshape(-1)  # [−1, 1] inputs, normalize=False
        avg64 = _with_avg_pooling(lpips_reference)(_resize(a, 64), _resize(b, 64)).reshape(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert abs(float(ours[0])) < 1e-7 and float(ours[1]) > 1e-3
    assert ((avg64[1:] - ours[1:]).abs() / ours[1:]).min() > 1e-2


def test_vgg_lpips_properties_gradients_bf16_channels_last_grey(vgg_lpips, pairs):
    small = vgg_lpips["avg16"]  # same trunk and weights, resized to 16×16 instead of 224 to keep CPU tests fast
    a, b = pairs
    ref = small(a, b)
    assert abs(float(ref[0])) < 1e-7  # identical images
    assert float(ref[1]) > 1e-3  # different images
    torch.testing.assert_close(ref[1], ref[2], rtol=1e-5, atol=0)  # symmetric: d(x, y) = d(y, x)
    torch.testing.assert_close(small(a[[2, 0, 1]], b[[2, 0, 1]]), ref[[2, 0, 1]], rtol=1e-5, atol=1e-7)  # per sample
    x = a.clone().requires_grad_(True)
    small(x, b).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() > 0
    assert all(p.grad is None for p in small.parameters())
    cl = copy.deepcopy(small).to(memory_format=torch.channels_last)
    out_cl = cl(a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf = small(a, b)
    assert out_bf.dtype == torch.float32 and torch.isfinite(out_bf).all()
    torch.testing.assert_close(out_bf[1:], ref[1:].detach(), rtol=0.1, atol=0)
    grey = small(a[:, :1], b[:, :1])  # grey images are repeated to RGB
    torch.testing.assert_close(grey, small(a[:, :1].expand(-1, 3, -1, -1), b[:, :1].expand(-1, 3, -1, -1)))
    # through ReflowLoss: the gradient reaches v̂
    t = torch.tensor([0.2, 0.5, 0.9])
    z = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x_t = (1 - t.view(-1, 1, 1, 1)) * a + t.view(-1, 1, 1, 1) * z
    v_pred = (z - b).requires_grad_(True)
    loss, terms = ReflowLoss("lpips-huber", perceptual=small)(v_pred, z - a, x_t, a, t)
    loss.mean().backward()
    assert torch.isfinite(v_pred.grad).all() and v_pred.grad.abs().sum() > 0
    assert set(terms) == {"pseudo_huber", "lpips"}


# ----------------------------------------------------------------------------------------------------------------
# missing weights


def _closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_url_is_torchvisions():
    assert VGG16_WEIGHTS_URL == torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    assert VGG16_WEIGHTS_URL.endswith("/" + VGG_FILE)


def test_missing_vgg_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    url = f"http://127.0.0.1:{_closed_loopback_port()}/models/{VGG_FILE}"  # refused at once: nothing listens
    with pytest.raises(PerceptualWeightsNotFoundError) as info:
        LPIPS(weights_url=url, progress=False)
    checkpoints = tmp_path / "hub" / "checkpoints"
    message = str(info.value)
    assert message.startswith(f"VGG16 weights not found: put {VGG_FILE} in {checkpoints}/ (download from {url}")
    assert isinstance(info.value, FileNotFoundError)
    assert list(checkpoints.iterdir()) == []  # no partial download left behind
