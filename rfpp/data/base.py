"""The common dataset interface.

Every dataset yields ``(image, label)``: ``image`` a float32 tensor (C, R, R) in [−1, 1] and ``label``
an int, the class index in ``[0, label_dim)``, or −1 where the dataset has no labels (``label_dim == 0``).
``resolution`` is the output side R; a dataset stored at another side is resized on the fly with
bilinear interpolation (``align_corners=False``, antialias off: smooth when upsampling, aliased when
downsampling; stated here so that statistics computed elsewhere can match).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ImageDataset", "resize_bilinear", "UNLABELED"]

UNLABELED = -1


def resize_bilinear(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize float images (C, H, W) or (N, C, H, W) to (…, resolution, resolution).

    Bilinear, ``align_corners=False``, ``antialias=False``; a no-op at the same size. Outputs stay in the
    input's range (each output is a convex combination of inputs).
    """
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    batched = x.ndim == 4
    y = F.interpolate(x if batched else x[None], size=(resolution, resolution), mode="bilinear",
                      align_corners=False, antialias=False)
    return y if batched else y[0]


class ImageDataset(torch.utils.data.Dataset):
    """Base class: subclasses set the attributes below and implement ``_load_native(idx)``.

    Attributes: ``name``; ``native_resolution`` (side as stored); ``resolution`` (side returned);
    ``channels`` (1 or 3); ``labels`` (int64 array of length N, −1 everywhere when unlabeled);
    ``label_dim`` (number of classes, 0 when unlabeled).
    """

    name: str
    native_resolution: int
    resolution: int
    channels: int
    labels: np.ndarray
    label_dim: int

    def _init_common(self, name: str, native_resolution: int, channels: int, labels: np.ndarray | None,
                     num_items: int, resolution: int | None) -> None:
        self.name = name
        self.native_resolution = int(native_resolution)
        if resolution is not None and (int(resolution) != resolution or resolution < 1):
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        self.resolution = int(resolution) if resolution is not None else self.native_resolution
        self.channels = int(channels)
        if labels is None:
            self.labels = np.full(num_items, UNLABELED, dtype=np.int64)
            self.label_dim = 0
        else:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (num_items,):
                raise ValueError(f"{name}: expected {num_items} labels, got shape {labels.shape}")
            if num_items and labels.min() < 0:
                raise ValueError(f"{name}: class labels must be non-negative integers")
            self.labels = labels
            self.label_dim = int(labels.max()) + 1 if num_items else 0

    @property
    def has_labels(self) -> bool:
        """Whether items carry class labels (``label_dim > 0``)."""
        return self.label_dim > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, R, R) of the returned images."""
        return (self.channels, self.resolution, self.resolution)

    def __len__(self) -> int:
        return len(self.labels)

    def _load_native(self, idx: int) -> torch.Tensor:
        """float32 (C, native, native) in [−1, 1]."""
        raise NotImplementedError

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        idx = int(idx)
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"{self.name}: index {idx} out of range for {len(self)} items")
        image = resize_bilinear(self._load_native(idx), self.resolution)
        return image, int(self.labels[idx])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, shape={self.image_shape}, "
                f"label_dim={self.label_dim})")
