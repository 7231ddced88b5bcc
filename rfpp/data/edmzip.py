"""Writing EDM's dataset zips (the layout dataset_tool.py makes and ``ImageFileDataset`` reads).

Image i goes to ``f"{i:08d}"[:5] + "/img" + f"{i:08d}" + ".png"`` as an uncompressed PNG (grey ``L`` or
``RGB``) in an uncompressed (stored) zip, and ``dataset.json`` holds ``{"labels": [[name, class], …]}``, or
``{"labels": null}`` for an unlabeled set. The zip is written under a temporary name beside the target and
moved into place on success only.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from rfpp.atomic import default_mode

from ..images import encode_png

__all__ = ["EdmZipWriter", "write_edm_zip", "edm_image_name"]


def edm_image_name(index: int) -> str:
    """Archive name of image ``index``: e.g. 12345 → ``"00012/img00012345.png"``."""
    s = f"{index:08d}"
    return f"{s[:5]}/img{s}.png"


def _as_uint8_nchw(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8:
        raise TypeError(f"EDM zips hold uint8 images; got dtype {images.dtype} (use rfpp.images.to_uint8)")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square uint8 images (N, C, H, W) with C in (1, 3), got {images.shape}")
    return images


class EdmZipWriter:
    """Append uint8 images (N, C, R, R) batch by batch; ``close()`` writes dataset.json and publishes the zip.

    Use as a context manager: an exception inside the block discards the partial file. All batches must
    share one shape, and either all carry labels (non-negative ints) or none does.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, default_mode())
        os.close(fd)
        self._tmp = Path(tmp)
        self._zip: zipfile.ZipFile | None = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED)
        self._shape: tuple[int, ...] | None = None
        self._labels: list[list] = []
        self._labeled: bool | None = None
        self.count = 0

    def add(self, images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor | None = None
            ) -> None:
        """Append a batch: ``images`` uint8 (N, C, R, R) or (C, R, R); ``labels`` N class indices or None."""
        if self._zip is None:
            raise RuntimeError(f"EdmZipWriter for {self.path} is closed")
        batch = _as_uint8_nchw(images)
        if self._shape is None:
            self._shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != self._shape:
            raise ValueError(f"image shape {tuple(batch.shape[1:])} differs from earlier images {self._shape}")
        labeled = labels is not None
        if self._labeled is None:
            self._labeled = labeled
        elif labeled != self._labeled:
            raise ValueError("either every batch has labels or none does")
        if labeled:
            label_list = [int(v) for v in np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).reshape(-1)]
            if len(label_list) != batch.shape[0]:
                raise ValueError(f"got {len(label_list)} labels for {batch.shape[0]} images")
            if any(v < 0 for v in label_list):
                raise ValueError("labels must be non-negative class indices")
        for i in range(batch.shape[0]):
            name = edm_image_name(self.count)
            self._zip.writestr(name, encode_png(batch[i], compress_level=0))
            if labeled:
                self._labels.append([name, label_list[i]])
            self.count += 1

    def close(self) -> Path:
        """Write dataset.json, finish the zip and move it to ``path``; returns ``path``."""
        if self._zip is None:
            return self.path
        if self.count == 0:
            self.abort()
            raise ValueError(f"no images were written to {self.path}")
        try:
            meta = {"labels": self._labels if self._labeled else None}
            self._zip.writestr("dataset.json", json.dumps(meta))
            self._zip.close()
            self._zip = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> EdmZipWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_edm_zip(images_uint8: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor | None,
                  path: str | os.PathLike) -> Path:
    """Write uint8 images (N, C, R, R), C ∈ {1, 3}, and optional class labels as an EDM dataset zip (atomically)."""
    with EdmZipWriter(path) as writer:
        writer.add(images_uint8, labels)
    return writer.path
