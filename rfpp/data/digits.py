"""scikit-learn's handwritten digits: 1797 grey 8×8 images, values 0..16, labels 0..9 (shipped, offline)."""

from __future__ import annotations

import numpy as np
import torch

from .base import ImageDataset, resize_bilinear

__all__ = ["DigitsDataset"]


class DigitsDataset(ImageDataset):
    """``sklearn.datasets.load_digits`` as (1, R, R) float32 images in [−1, 1]: ``x = v/8 − 1`` for v ∈ 0..16.

    ``resolution`` (default 8) resizes bilinearly (antialias off, see ``rfpp.data.base``); the whole set is
    resized once at construction (1797 images are small). Labels are the digits 0..9 (``label_dim = 10``).
    """

    def __init__(self, resolution: int | None = None) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        values = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), 0..16
        images = torch.from_numpy(values / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
        self._init_common("digits", native_resolution=8, channels=1, labels=np.asarray(bunch.target),
                          num_items=images.shape[0], resolution=resolution)
        self._images = resize_bilinear(images, self.resolution).contiguous()

    def _load_native(self, idx: int) -> torch.Tensor:
        return self._images[idx]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        idx = int(idx)
        if not -len(self) <= idx < len(self):
            raise IndexError(f"digits: index {idx} out of range for {len(self)} items")
        return self._images[idx].clone(), int(self.labels[idx])

    @property
    def images(self) -> torch.Tensor:
        """All images at ``resolution``, float32 (N, 1, R, R) in [−1, 1] (a view; do not modify)."""
        return self._images
