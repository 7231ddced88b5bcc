"""Test-only random-weight stand-ins for the two downloaded networks, written where a user's offline machine would
hold the real files: a TORCH_HOME hub cache (``$TORCH_HOME/hub/checkpoints/``).

- VGG16 (the LPIPS trunk): torchvision's ``vgg16-397923af.pth``, a freshly initialised torchvision VGG16.
- Inception (FID): torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, its inception-v3-compat
  module with variance-preserving random convolutions (so features are not vanishingly small).

torch.hub checks a file's hash prefix only when it downloads; a file already in the cache is loaded as is, exactly
as for a user who placed the real file there by hand.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch

VGG16_FILE = "vgg16-397923af.pth"


def hub_checkpoints(torch_home: str | Path) -> Path:
    """``<TORCH_HOME>/hub/checkpoints`` (created)."""
    path = Path(torch_home) / "hub" / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_random_vgg16(torch_home: str | Path, seed: int = 1234) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random-weight torchvision VGG16 state dict under torchvision's file name → (path, the state dict)."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = torchvision.models.vgg16(weights=None).state_dict()
    path = hub_checkpoints(torch_home) / VGG16_FILE
    torch.save(state, path)
    return path, state


def write_random_inception(torch_home: str | Path, seed: int = 0) -> Path:
    """A random-weight inception-v3-compat state dict under torch-fidelity's file name → its path."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None), \
            mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():  # variance-preserving random weights, so features are not vanishingly small
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data = torch.randn(module.weight.shape, generator=gen) * (2 / fan_in) ** 0.5
    path = hub_checkpoints(torch_home) / tfi.URL_INCEPTION_V3.rsplit("/", 1)[-1]
    torch.save(net.state_dict(), path)
    return path
