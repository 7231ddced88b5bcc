"""Perceptual distances with LPIPS's recipe, on a pluggable feature network.

Recipe (Zhang et al. 2018), per layer l with feature maps f_l(x), f_l(y) of shape (N, C_l, H_l, W_l):
unit-normalise each spatial position's channel vector (f / (‖f‖₂ + 1e−10)), take the squared difference,
weight the channels (a non-negative 1×1 linear layer, or a plain channel sum without weights), average over
space; then sum over layers → (N,).

- `FeatureLPIPS(feature_net, weights=None)`: the recipe on any `FeatureNet` (an nn.Module mapping images in
  [−1, 1] to a list of 4-D feature maps), e.g. the digits profile's small classifier.
- `LPIPS(pool="avg")`: the paper's term: torchvision's VGG16 trunk (ImageNet weights) tapped at relu1_2,
  relu2_2, relu3_3, relu4_3, relu5_3, with max pooling replaced by 2×2 average pooling (``pool="max"`` keeps
  VGG's max pooling, i.e. the `lpips` package's own metric), and the `lpips` package's learned linear weights
  (lpips/weights/v0.1/vgg.pth).

Input convention of `LPIPS`: images x in [−1, 1], shape (N, 3, H, W) (or (N, 1, H, W), repeated to 3 channels).
Both images are bilinearly resized to 224×224 (align_corners=False, no antialias), mapped to [0, 1] by
u = x·0.5 + 0.5, then ImageNet-normalised: (u − mean)/std with mean (0.485, 0.456, 0.406), std (0.229, 0.224,
0.225). This is exactly what the paper's code did (piq's LPIPS fed x·0.5 + 0.5) and it is the same affine map as
the `lpips` package's ScalingLayer applied to x in [−1, 1] (shift = 2·mean − 1 = (−0.030, −0.088, −0.188),
scale = 2·std = (0.458, 0.448, 0.450)): `lpips.LPIPS` expects [−1, 1] inputs (its ``normalize=True`` flag
maps [0, 1] inputs to [−1, 1] first). Feeding [0, 1] images to the ScalingLayer would normalise wrongly.

The feature networks are frozen (requires_grad False) and kept in eval mode even when a parent module is put
in training mode; gradients flow to the inputs. Features are reduced in at least float32, so the modules work
under bf16/fp16 autocast and with channels_last inputs.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from rfpp.losses.pointwise import check_same_shape

# torchvision's VGG16_Weights.IMAGENET1K_V1.url (tests/test_losses.py checks it), written out: importing
# torchvision.models costs every training process 1.5 s (it loads torch._dynamo).
VGG16_WEIGHTS_URL: str = "https://download.pytorch.org/models/vgg16-397923af.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_EPS = 1e-10
LPIPS_SIZE = 224
POOLS = ("avg", "max")

# torchvision's vgg16().features layout up to relu5_3 (indices 0..29): ints are 3×3 conv widths, "M" a 2×2 pool.
_VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                        512, 512, 512)
_VGG16_TAPS: dict[int, str] = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3", 29: "relu5_3"}


@runtime_checkable
class FeatureNet(Protocol):
    """A perceptual feature network: images (N, C, H, W) in [−1, 1] → list of feature maps (N, C_l, H_l, W_l)."""

    def __call__(self, x: torch.Tensor) -> Sequence[torch.Tensor]: ...


class PerceptualWeightsNotFoundError(FileNotFoundError):
    """The perceptual network's pretrained weights are neither cached nor downloadable."""


def _unit_normalise(f: torch.Tensor) -> torch.Tensor:
    """Divide each position's channel vector by its L2 norm (+1e−10). vector_norm's backward is 0 at a zero
    vector (sqrt(sum(f²)) would give NaN there)."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + FEATURE_EPS)


class FeatureLPIPS(nn.Module):
    """LPIPS's recipe on any frozen feature network. forward(x, y) → (N,) distances.

    feature_net: an nn.Module following `FeatureNet`, called once on the concatenated batch [x; y], or, when
    only x needs a gradient (training), on x with autograd and on y without; it is frozen in place
    (requires_grad False, eval mode). weights: optional per-layer channel weights, one non-negative tensor of
    C_l elements per feature map (any shape with C_l elements, e.g. (1, C_l, 1, 1)); without them the
    channels are summed. name: shown by describe(); defaults to feature_net.name or its class.
    """

    def __init__(self, feature_net: nn.Module, weights: Sequence[torch.Tensor] | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        if not isinstance(feature_net, nn.Module):
            raise TypeError(f"feature_net must be an nn.Module, got {type(feature_net).__name__}")
        self.net = feature_net
        self.net.requires_grad_(False)
        self.net.eval()
        self.name: str = name or getattr(feature_net, "name", None) or type(feature_net).__name__
        self.num_weighted_layers: int | None = None
        if weights is not None:
            for i, w in enumerate(weights):
                w = torch.as_tensor(w).detach().reshape(-1).clone()
                if not w.is_floating_point():
                    w = w.to(torch.float32)
                if not torch.isfinite(w).all() or (w < 0).any():
                    raise ValueError(f"LPIPS channel weights must be finite and non-negative (layer {i})")
                self.register_buffer(f"weight{i}", w)
            self.num_weighted_layers = len(weights)
        self.eval()

    def layer_weights(self) -> list[torch.Tensor] | None:
        """The per-layer channel weights, each of shape (C_l,), or None (plain channel sum)."""
        if self.num_weighted_layers is None:
            return None
        return [getattr(self, f"weight{i}") for i in range(self.num_weighted_layers)]

    def describe(self) -> str:
        """Which perceptual network is used, e.g. "feature-lpips(digits-classifier)"."""
        return f"feature-lpips({self.name})"

    def train(self, mode: bool = True) -> FeatureLPIPS:
        """Always stays in eval mode: the perceptual network is frozen."""
        return super().train(False)

    @staticmethod
    def _feature_list(feats: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        if isinstance(feats, torch.Tensor):
            raise TypeError("the feature network must return a list of feature maps, got a single tensor")
        return list(feats)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perceptual distance per sample between images x and y (same shape (N, C, H, W), in [−1, 1]) → (N,)."""
        check_same_shape(x, y, ("x", "y"))
        n = x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad and not y.requires_grad:
            # Training: only x̂ needs a gradient. One pass over [x; y] would also run the network's backward
            # for the targets' half and keep its activations; the targets go through without autograd instead.
            fx = self._feature_list(self.net(x))
            with torch.no_grad():
                fy = self._feature_list(self.net(y))
            if len(fx) != len(fy):
                raise ValueError("the feature network returned different numbers of maps for x and y")
        else:
            both = self._feature_list(self.net(torch.cat([x, y])))
            for i, f in enumerate(both):
                if f.ndim != 4 or f.shape[0] != 2 * n:
                    raise ValueError(f"feature map {i} must have shape ({2 * n}, C, H, W), got {tuple(f.shape)}")
            fx, fy = [f[:n] for f in both], [f[n:] for f in both]
        weights = self.layer_weights()
        if weights is not None and len(weights) != len(fx):
            raise ValueError(f"{len(weights)} weight tensors for {len(fx)} feature maps")
        if not fx:
            raise ValueError("the feature network returned no feature maps")
        total: torch.Tensor | None = None
        for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
            if a.ndim != 4 or a.shape[0] != n or a.shape != b.shape:
                raise ValueError(f"feature map {i} must have shape ({n}, C, H, W) for x and y, got "
                                 f"{tuple(a.shape)} and {tuple(b.shape)}")
            dtype = torch.promote_types(a.dtype, torch.float32)
            diff = (_unit_normalise(a.to(dtype)) - _unit_normalise(b.to(dtype))).square()
            if weights is None:
                per_position = diff.sum(dim=1)
            else:
                w = weights[i]
                if w.numel() != a.shape[1]:
                    raise ValueError(f"feature map {i} has {a.shape[1]} channels but its weights {w.numel()}")
                per_position = (diff * w.to(diff.dtype).view(1, -1, 1, 1)).sum(dim=1)
            term = per_position.mean(dim=(1, 2))
            total = term if total is None else total + term
        assert total is not None
        return total


def vgg16_cache_path(url: str = VGG16_WEIGHTS_URL) -> Path:
    """Where torch.hub looks for the VGG16 weights: <torch.hub.get_dir()>/checkpoints/<file name of url>
    (by default $TORCH_HOME/hub/checkpoints/vgg16-397923af.pth, TORCH_HOME defaulting to ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_vgg16_state_dict(url: str = VGG16_WEIGHTS_URL, progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 ImageNet state dict through the torch hub cache, as torchvision loads it.

    Uses the cached file when present; otherwise downloads it from url (check_hash=True as torchvision does:
    the SHA-256 prefix in the file name is verified on download; a cached file is trusted as is). Raises
    PerceptualWeightsNotFoundError naming the file and the directory to put it in when it is neither cached
    nor downloadable (e.g. offline).
    """
    cached = vgg16_cache_path(url)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                                  weights_only=True)
    except (OSError, http.client.HTTPException) as err:
        if cached.exists():  # the file is there: not a download problem
            raise
        raise PerceptualWeightsNotFoundError(
            f"VGG16 weights not found: put {cached.name} in {cached.parent}/ (download from {url}; the directory "
            f"is $TORCH_HOME/hub/checkpoints, see torch.hub.get_dir()). The download failed: {err}") from err


def load_lpips_linear_weights(net: str = "vgg") -> list[torch.Tensor]:
    """The `lpips` package's learned linear-layer weights (lpips/weights/v0.1/<net>.pth) as tensors (C_l,)."""
    spec = importlib.util.find_spec("lpips")  # locates the installed package without importing it
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the lpips package (pip install lpips==0.1.4) provides LPIPS's linear weights")
    path = Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise PerceptualWeightsNotFoundError(f"LPIPS linear weights not found at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    keys = sorted((k for k in state if k.startswith("lin")), key=lambda k: int(k[3:].split(".")[0]))
    return [state[k].reshape(-1).to(torch.float32) for k in keys]


def lpips_version() -> str:
    """Installed version of the `lpips` package (the source of the linear weights)."""
    try:
        return importlib.metadata.version("lpips")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class VGG16Features(nn.Module):
    """torchvision's VGG16 trunk up to relu5_3 → [relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] feature maps.

    Input: images in [−1, 1], (N, 3, H, W) or (N, 1, H, W) (grey, repeated to RGB). They are bilinearly resized
    to size×size (224 by default; align_corners=False), mapped to [0, 1] (x·0.5 + 0.5) and ImageNet-normalised
    (see the module docstring). pool: "avg" replaces VGG's 2×2 max pooling by 2×2 average pooling (the paper's
    setting), "max" keeps it. Weights: `load_vgg16_state_dict(weights_url)`, keys "features.<i>.*" as in
    torchvision (the submodule `features` has torchvision's indices 0..29, so the keys load unchanged).
    """

    def __init__(self, pool: str = "avg", size: int | None = LPIPS_SIZE, weights_url: str = VGG16_WEIGHTS_URL,
                 progress: bool = True) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
        state = load_vgg16_state_dict(weights_url, progress=progress)  # first: fail fast without weights
        self.pool = pool
        self.size = size
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.AvgPool2d(2, 2) if pool == "avg" else nn.MaxPool2d(2, 2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU()]
                in_ch = item
        self.features = nn.Sequential(*layers)
        prefix = "features."
        trunk = {k[len(prefix):]: v for k, v in state.items()
                 if k.startswith(prefix) and int(k[len(prefix):].split(".")[0]) < len(layers)}
        self.features.load_state_dict(trunk, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[−1, 1] images → resized, [0, 1], ImageNet-normalised RGB (N, 3, size, size)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG16 features need images (N, 3, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        u = x * 0.5 + 0.5
        return (u - self.mean.to(u.dtype)) / self.std.to(u.dtype)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images in [−1, 1] → the five tapped ReLU outputs."""
        h = self.preprocess(x)
        taps: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG16_TAPS:
                taps.append(h)
        return taps


class LPIPS(FeatureLPIPS):
    """The paper's LPIPS: VGG16 trunk (avg pooling by default) + the `lpips` package's linear weights.

    forward(x, y): images in [−1, 1], (N, 3, H, W) → (N,). size: the resize before VGG (224, the paper's; None
    keeps the input size). weights_url: where to download VGG16 when it is not in the torch hub cache
    (torchvision's URL; tests point it at 127.0.0.1). See the module docstring for the exact preprocessing.
    """

    def __init__(self, pool: str = "avg", size: int | None = LPIPS_SIZE, weights_url: str = VGG16_WEIGHTS_URL,
                 progress: bool = True) -> None:
        trunk = VGG16Features(pool=pool, size=size, weights_url=weights_url, progress=progress)
        super().__init__(trunk, weights=load_lpips_linear_weights("vgg"), name=f"lpips-vgg16-{pool}pool")
        self.pool = pool
        self.size = size

    def describe(self) -> str:
        """E.g. "lpips-vgg16-avgpool (lpips 0.1.4 linear weights)"."""
        text = f"{self.name} (lpips {lpips_version()} linear weights)"
        if self.size != LPIPS_SIZE:
            text += f", resized to {self.size}" if self.size is not None else ", not resized"
        return text
