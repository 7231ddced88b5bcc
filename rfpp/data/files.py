"""Images stored as files: a directory tree of PNG/JPEG files, or a zip of them (EDM's dataset_tool.py format).

EDM's zip layout: PNGs named ``00000/img00000000.png`` … (the first five digits of the eight-digit index
name the folder) and a ``dataset.json`` at the root holding ``{"labels": [["00000/img00000000.png", 6], …]}``
or ``{"labels": null}``. A directory may carry the same ``dataset.json``. Files are listed recursively,
sorted by their '/'-separated relative name; that order is the item order.

Images must all be square, of one size and one channel count (8-bit grey ``L``, or ``RGB``; palette
images are read as RGB, 1-bit as grey). Every file's header is checked when the dataset opens
(``validate=True``); pixel data are decoded lazily in ``__getitem__``. A zip is opened lazily, once per
process: after a fork (DataLoader workers) each worker opens its own handle, and pickling drops it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch

from ..images import from_uint8
from .base import ImageDataset

__all__ = ["ImageFileDataset", "DatasetError", "IMAGE_EXTENSIONS", "LabelSource"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LabelSource = Literal["json", "subfolders", "none"]
_CHANNELS = {"L": 1, "1": 1, "RGB": 3, "P": 3}  # PIL mode → channels after our conversion
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {(8, 0): 1, (1, 0): 1, (8, 2): 3, (8, 3): 3, (4, 3): 3, (2, 3): 3, (1, 3): 3}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError)


class DatasetError(ValueError):
    """A dataset that cannot be read as asked: empty, inconsistent, corrupted, or badly labelled."""


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith("._")
            and not name.startswith("__MACOSX/"))


def _to_array(img: PIL.Image.Image) -> np.ndarray:
    """Decoded PIL image → uint8 (C, H, W)."""
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageFileDataset(ImageDataset):
    """PNG/JPEG images from a directory (recursively) or a ``.zip``; images float32 (C, R, R) in [−1, 1].

    Pixels are read with the on-disk convention ``x = u/127.5 − 1``. ``labels``: ``"json"`` uses
    ``dataset.json`` when present and not null (every image must be listed, with an integer class),
    otherwise the set is unlabeled; ``"subfolders"`` numbers the sorted top-level folder names 0..K−1
    (``class_names`` keeps them); ``"none"`` ignores labels. ``resolution`` resizes bilinearly.
    """

    def __init__(self, path: str | os.PathLike, resolution: int | None = None, labels: LabelSource = "json",
                 validate: bool = True) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"dataset path does not exist: {self.path}")
        if self.path.is_dir():
            self._kind = "dir"
            all_names = sorted(
                Path(root, f).relative_to(self.path).as_posix()
                for root, _dirs, files in os.walk(self.path) for f in files
            )
        elif self.path.suffix.lower() == ".zip":
            self._kind = "zip"
            try:
                all_names = sorted(n for n in self._zip().namelist() if not n.endswith("/"))
            except zipfile.BadZipFile as e:
                raise DatasetError(f"{self.path}: not a readable zip file ({e})") from e
        else:
            raise DatasetError(f"{self.path}: a dataset must be a directory or a .zip file")
        self._zipfile: zipfile.ZipFile | None = getattr(self, "_zipfile", None)
        self._names = [n for n in all_names if _is_image_name(n)]
        if not self._names:
            where = "directory" if self._kind == "dir" else "zip"
            raise DatasetError(f"{self.path}: no PNG/JPEG images found in this {where}")

        # Shape from the first image; with validate, every header must agree.
        first = self._header(self._names[0])
        channels, size = first
        for name in self._names[1:] if validate else []:
            got = self._header(name)
            if got != first:
                raise DatasetError(
                    f"{self.path}: images must all have one size and channel count: {self._names[0]} is "
                    f"{size}x{size}x{channels} but {name} is {got[1]}x{got[1]}x{got[0]}")

        self.class_names: list[str] | None = None
        label_array = self._read_labels(labels, "dataset.json" in all_names)
        self._init_common(self.path.stem if self._kind == "zip" else self.path.name, native_resolution=size,
                          channels=channels, labels=label_array, num_items=len(self._names), resolution=resolution)

    # --- file access -----------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The image files' relative names, in item order."""
        return list(self._names)

    def _zip(self) -> zipfile.ZipFile:
        """This process's handle on the zip (reopened after a fork)."""
        z = getattr(self, "_zipfile", None)
        if z is None or getattr(self, "_zip_pid", None) != os.getpid():
            self._zipfile = zipfile.ZipFile(self.path, "r")
            self._zip_pid = os.getpid()
        return self._zipfile

    def _read(self, name: str) -> bytes:
        if self._kind == "dir":
            return (self.path / name).read_bytes()
        return self._zip().read(name)

    def _open_image(self, name: str) -> PIL.Image.Image:
        try:
            if self._kind == "dir":
                return PIL.Image.open(self.path / name)
            return PIL.Image.open(io.BytesIO(self._read(name)))
        except _DECODE_ERRORS as e:
            raise DatasetError(f"{self.path}: cannot read image {name}: {e}") from e

    def _read_head(self, name: str, n: int) -> bytes:
        if self._kind == "dir":
            with open(self.path / name, "rb") as f:
                return f.read(n)
        with self._zip().open(name) as f:
            return f.read(n)

    def _header(self, name: str) -> tuple[int, int]:
        """(channels, side) from the file header only (a PNG's IHDR is parsed directly: fast on big sets)."""
        if name.lower().endswith(".png"):
            head = self._read_head(name, 33)
            if len(head) == 33 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
                w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
                channels = _PNG_CHANNELS.get((head[24], head[25]))  # (bit depth, colour type)
                if channels is not None and w == h and w > 0:
                    return channels, w
        with self._open_image(name) as img:
            mode, (w, h) = img.mode, img.size
        if mode not in _CHANNELS:
            raise DatasetError(f"{self.path}: image {name} has unsupported mode {mode!r} (need 8-bit grey or RGB)")
        if w != h:
            raise DatasetError(f"{self.path}: image {name} is {w}x{h}; images must be square")
        return _CHANNELS[mode], w

    def close(self) -> None:
        """Close this process's zip handle (reopened on the next read)."""
        z = getattr(self, "_zipfile", None)
        self._zipfile = None
        if z is not None and getattr(self, "_zip_pid", None) == os.getpid():
            z.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zipfile"] = None
        state["_zip_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- labels ----------------------------------------------------------------------------------------

    def _read_labels(self, source: LabelSource, has_json: bool) -> np.ndarray | None:
        if source == "none":
            return None
        if source == "subfolders":
            tops = []
            for name in self._names:
                if "/" not in name:
                    raise DatasetError(f"{self.path}: labels='subfolders' but image {name} is not inside a subfolder")
                tops.append(name.split("/", 1)[0])
            self.class_names = sorted(set(tops))
            index = {c: i for i, c in enumerate(self.class_names)}
            return np.array([index[t] for t in tops], dtype=np.int64)
        if source != "json":
            raise ValueError(f"labels must be 'json', 'subfolders' or 'none', got {source!r}")
        if not has_json:
            return None
        try:
            meta = json.loads(self._read("dataset.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{self.path}: dataset.json is not valid JSON ({e})") from e
        entries = meta.get("labels") if isinstance(meta, dict) else None
        if entries is None:
            return None
        try:
            table = {str(k).replace("\\", "/"): v for k, v in entries}
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{self.path}: dataset.json 'labels' must be a list of [file name, label] pairs") from e
        out = np.empty(len(self._names), dtype=np.int64)
        for i, name in enumerate(self._names):
            if name not in table:
                raise DatasetError(f"{self.path}: dataset.json has no label for image {name}")
            value = table[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
                raise DatasetError(f"{self.path}: label of {name} is {value!r}; only non-negative integer class "
                                   "labels are supported")
            out[i] = int(value)
        return out

    # --- items -----------------------------------------------------------------------------------------

    def load_uint8(self, idx: int) -> np.ndarray:
        """Item ``idx`` as stored: uint8 (C, native, native), not resized."""
        name = self._names[idx]
        try:
            with self._open_image(name) as img:
                arr = _to_array(img)
        except DatasetError:
            raise
        except _DECODE_ERRORS as e:
            raise DatasetError(f"{self.path}: cannot decode image {name}: {e}") from e
        expected = (self.channels, self.native_resolution, self.native_resolution)
        if arr.shape != expected:
            raise DatasetError(f"{self.path}: image {name} decodes to shape {arr.shape}, expected {expected}")
        return arr

    def _load_native(self, idx: int) -> torch.Tensor:
        return from_uint8(torch.from_numpy(self.load_uint8(idx)))
