"""Network presets shared by the benchmarks (EDM constructor keyword arguments, ready for `build_network`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetPreset:
    """A benchmarked network: architecture name, EDM kwargs, default batch per device, expected size."""

    name: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_cpu: int = 8
    batch_gpu: int = 128
    expected_params: int | None = None
    note: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        res = int(self.kwargs["img_resolution"])
        return int(self.kwargs["in_channels"]), res, res


# EDM's `train.py --arch=ncsnpp --precond=ve` on CIFAR-10 (augment 0.12 -> augment_dim 9, dropout 0.13): the
# network of edm-cifar10-32x32-uncond-ve.pkl and so of the CIFAR-10 student. num_blocks (4) and
# attn_resolutions ([16]) are SongUNet's defaults, which EDM's train.py leaves alone.
CIFAR10_NCSNPP = NetPreset(
    name="cifar10",
    arch="SongUNet",
    kwargs=dict(img_resolution=32, in_channels=3, out_channels=3, label_dim=0, augment_dim=9,
                model_channels=128, channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4,
                attn_resolutions=[16], dropout=0.13, embedding_type="fourier", channel_mult_noise=2,
                encoder_type="residual", decoder_type="standard", resample_filter=[1, 3, 3, 1]),
    batch_cpu=8,
    batch_gpu=128,
    expected_params=56_397_827,
    note="EDM cifar10 NCSN++ (VE teacher / student)",
)

# A digits-scale network (8x8, one channel): the size of thing the CPU profile trains.
SMALL = NetPreset(
    name="small",
    arch="SongUNet",
    kwargs=dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=0, augment_dim=0,
                model_channels=32, channel_mult=[1, 2], channel_mult_emb=4, num_blocks=2,
                attn_resolutions=[4], dropout=0.0, embedding_type="positional", channel_mult_noise=1,
                encoder_type="standard", decoder_type="standard", resample_filter=[1, 1]),
    batch_cpu=64,
    batch_gpu=1024,
    note="digits-scale DDPM++ (8x8x1, 32 ch, mult [1,2], 2 blocks)",
)

NETS: dict[str, NetPreset] = {p.name: p for p in (CIFAR10_NCSNPP, SMALL)}
