"""Reflow losses (per sample, shape (N,); the caller takes the mean). t = 0 data, t = 1 noise; images in [−1, 1].

Pointwise: `l2`, `l2_squared`, `pseudo_huber(pred, target, c=None, c_mode="reference")`.
Perceptual: `LPIPS(pool="avg")` (VGG16 + lpips's linear weights), `FeatureLPIPS(feature_net, weights=None)`.
Training entry point: `ReflowLoss(kind, perceptual=None, huber_c_mode="reference")`; `combine(kind, huber,
lpips, t)` combines precomputed terms.
"""

from rfpp.lazy import exports, names

_IMPORTS = {
    "perceptual": (
        "LPIPS",
        "VGG16_WEIGHTS_URL",
        "FeatureLPIPS",
        "FeatureNet",
        "PerceptualWeightsNotFoundError",
        "VGG16Features",
        "load_lpips_linear_weights",
        "load_vgg16_state_dict",
        "vgg16_cache_path",
    ),
    "pointwise": ("HUBER_C_MODES", "huber_c", "l2", "l2_squared", "pseudo_huber"),
    "reflow": ("KINDS", "PERCEPTUAL_KINDS", "ReflowLoss", "combine"),
    "kinds": ("PERCEPTUAL_NETS",),
}
__all__ = names(_IMPORTS)
__getattr__ = exports(__name__, _IMPORTS)  # on first use: rfpp.losses.kinds loads without torch
