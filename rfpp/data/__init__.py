"""Datasets: images as float32 (C, R, R) in [−1, 1] with int labels (−1 when unlabeled).

``open_dataset(spec, resolution=None, **options)`` takes ``"digits"`` (scikit-learn's 8×8 digits), a
directory of PNG/JPEG files, or a ``.zip`` in EDM's dataset_tool.py format. See ``base.ImageDataset`` for the
interface and ``files`` for the on-disk formats.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import UNLABELED, ImageDataset, resize_bilinear
from .digits import DigitsDataset
from .edmzip import EdmZipWriter, edm_image_name, write_edm_zip
from .files import IMAGE_EXTENSIONS, DatasetError, ImageFileDataset, LabelSource

__all__ = [
    "open_dataset",
    "ImageDataset",
    "DigitsDataset",
    "ImageFileDataset",
    "DatasetError",
    "EdmZipWriter",
    "write_edm_zip",
    "edm_image_name",
    "resize_bilinear",
    "UNLABELED",
    "IMAGE_EXTENSIONS",
    "LabelSource",
]

NAMED_DATASETS = ("digits",)


def _looks_like_path(spec: str) -> bool:
    return (spec.lower().endswith(".zip") or "/" in spec or os.sep in spec
            or spec.startswith((".", "~")))


def open_dataset(spec: str | os.PathLike, resolution: int | None = None, **options) -> ImageDataset:
    """Open a dataset by spec: ``"digits"``, a directory, or a ``.zip`` (EDM format).

    ``resolution`` resizes every image bilinearly to that side (antialias off); None keeps the stored side.
    ``options`` go to the dataset class (for files: ``labels="json"|"subfolders"|"none"``, ``validate``).
    Raises FileNotFoundError for a missing path, ``DatasetError`` for unreadable data, and ValueError for a
    spec that is neither a known name nor a path.
    """
    if isinstance(spec, str) and spec in NAMED_DATASETS:
        if spec == "digits":
            return DigitsDataset(resolution=resolution, **options)
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists() or isinstance(spec, os.PathLike) or _looks_like_path(text):
        return ImageFileDataset(path, resolution=resolution, **options)
    raise ValueError(f"unknown dataset spec {text!r}: expected one of {', '.join(NAMED_DATASETS)}, "
                     "a directory of PNG/JPEG images, or a .zip in EDM's dataset_tool.py format")
