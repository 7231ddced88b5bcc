"""Reflow losses (per sample, shape (N,); the caller takes the mean). t = 0 data, t = 1 noise; images in [−1, 1].

Pointwise: `l2`, `l2_squared`, `pseudo_huber(pred, target, c=None, c_mode="reference")`.
Perceptual: `LPIPS(pool="avg")` (VGG16 + lpips's linear weights), `FeatureLPIPS(feature_net, weights=None)`.
Training entry point: `ReflowLoss(kind, perceptual=None, huber_c_mode="reference")`; `combine(kind, huber,
lpips, t)` combines precomputed terms.
"""

from rfpp.losses.perceptual import (
    LPIPS,
    VGG16_WEIGHTS_URL,
    FeatureLPIPS,
    FeatureNet,
    PerceptualWeightsNotFoundError,
    VGG16Features,
    load_lpips_linear_weights,
    load_vgg16_state_dict,
    vgg16_cache_path,
)
from rfpp.losses.pointwise import HUBER_C_MODES, huber_c, l2, l2_squared, pseudo_huber
from rfpp.losses.reflow import KINDS, PERCEPTUAL_KINDS, ReflowLoss, combine

__all__ = [
    "HUBER_C_MODES",
    "KINDS",
    "LPIPS",
    "PERCEPTUAL_KINDS",
    "VGG16_WEIGHTS_URL",
    "FeatureLPIPS",
    "FeatureNet",
    "PerceptualWeightsNotFoundError",
    "ReflowLoss",
    "VGG16Features",
    "combine",
    "huber_c",
    "l2",
    "l2_squared",
    "load_lpips_linear_weights",
    "load_vgg16_state_dict",
    "pseudo_huber",
    "vgg16_cache_path",
]
