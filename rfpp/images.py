"""The on-disk image convention and small image writers.

Images in memory are float tensors in [−1, 1], shape (N, C, H, W) (or (C, H, W)). On disk they are
uint8: ``u = clip(floor(x·127.5 + 128), 0, 255)``, read back as ``x = u/127.5 − 1``. The two maps
round-trip exactly on uint8 (``to_uint8(from_uint8(u)) == u``: the value before the floor is
``u + 0.5``, half a level away from either neighbour) and within 0.5/127.5 on floats in [−1, 1].

Every file written here appears atomically: it is written under a temporary name in the target
directory and then moved into place with ``os.replace``.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from rfpp.atomic import atomic_write

__all__ = [
    "to_uint8",
    "from_uint8",
    "encode_png",
    "atomic_write",
    "make_grid_uint8",
    "save_grid",
    "save_png_folder",
]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [−1, 1] (any shape, usually (N, C, H, W)) → uint8 of the same shape.

    ``u = clip(floor(x·127.5 + 128), 0, 255)``, computed in float32 (or float64 for float64 input).
    NaN maps to 128 (as x = 0) so the result is always defined; ±inf clip to 255 / 0.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"to_uint8 expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"to_uint8 expects a float tensor in [-1, 1], got dtype {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()
    x = torch.nan_to_num(x, nan=0.0)
    return torch.floor(x * 127.5 + 128.0).clamp_(0, 255).to(torch.uint8)


def from_uint8(u: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (any shape) → float32 in [−1, 1]: ``x = u/127.5 − 1``."""
    if isinstance(u, np.ndarray):
        u = torch.from_numpy(u)
    if u.dtype != torch.uint8:
        raise TypeError(f"from_uint8 expects a uint8 tensor, got dtype {u.dtype}")
    return u.to(torch.float32) / 127.5 - 1.0


def _as_uint8_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) on the CPU from uint8 or float-in-[−1, 1] input of shape (N, C, H, W) or (C, H, W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    return images.detach().cpu()


def encode_png(image: torch.Tensor | np.ndarray, compress_level: int = 6) -> bytes:
    """One uint8 image (C, H, W) with C ∈ {1, 3} → PNG bytes (mode L or RGB)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"encode_png expects uint8 (C, H, W) with C in (1, 3), got {image.dtype} {image.shape}")
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    pil = PIL.Image.fromarray(hwc[:, :, 0], "L") if hwc.shape[2] == 1 else PIL.Image.fromarray(hwc, "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def make_grid_uint8(u: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 0) -> torch.Tensor:
    """uint8 (N, C, H, W) → one uint8 (C, H', W') grid, ``nrow`` images per row, ``padding`` pixels of
    ``pad_value`` around and between cells (torchvision's ``make_grid`` layout, without importing it)."""
    n, c, h, w = u.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    ch, cw = h + padding, w + padding
    grid = torch.full((c, nrows * ch + padding, ncol * cw + padding), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[:, r * ch + padding: r * ch + padding + h, k * cw + padding: k * cw + padding + w] = u[i]
    return grid


def save_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    nrow: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> Path:
    """Write images as one PNG grid (atomically).

    ``images``: float in [−1, 1] or uint8, shape (N, C, H, W) or (C, H, W), C ∈ {1, 3}. ``nrow`` is the
    number of images per row (default ⌈√N⌉); ``padding`` pixels of black between cells; ``scale`` an
    integer nearest-neighbour magnification (handy for 8×8 digits). One channel gives a grayscale PNG.
    """
    u = _as_uint8_batch(images)
    n = u.shape[0]
    if n == 0:
        raise ValueError("save_grid got no images")
    if nrow is None:
        nrow = max(1, math.ceil(math.sqrt(n)))
    if scale != 1:
        if scale < 1 or int(scale) != scale:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        u = u.repeat_interleave(int(scale), dim=2).repeat_interleave(int(scale), dim=3)
    data = encode_png(make_grid_uint8(u, nrow=nrow, padding=padding))
    return atomic_write(path, lambda f: f.write(data))


def save_png_folder(
    images: torch.Tensor | np.ndarray,
    folder: str | os.PathLike,
    start_index: int = 0,
    name_format: str = "{:06d}.png",
) -> list[Path]:
    """Write each image as its own PNG, ``folder/<name_format.format(start_index + i)>``, each atomically.

    ``images``: float in [−1, 1] or uint8, shape (N, C, H, W), C ∈ {1, 3}. Returns the paths written.
    Such a folder reads back with ``rfpp.data.open_dataset(folder)``.
    """
    u = _as_uint8_batch(images)
    folder = Path(folder)
    paths = []
    for i in range(u.shape[0]):
        data = encode_png(u[i])
        paths.append(atomic_write(folder / name_format.format(start_index + i), lambda f, d=data: f.write(d)))
    return paths
