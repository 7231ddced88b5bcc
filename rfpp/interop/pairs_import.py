"""Import a pair set made by the paper's `generate_edm.py` as an rfpp pair set that `rfpp train` reads.

The paper's set (docs/interop.md):
- `samples.zip`: one PNG per pair (`00000.png`, or `<k>/00000.png` in subfolders of 60000), the teacher's image;
- `z.zip`: one 32-byte `<stem>.bin` per pair, the numpy PCG64 (state, increment) that drew the pair's noise
  (rfpp.pairs.pcg64); the image of `<stem>.bin` is `<stem>.png`;
- `images_labels.csv` (class-conditional sets): rows `<stem>.png,<label>`.
Its loader takes the pairs in the sorted order of z.zip's entry names; item i here is the i-th of them.

The result is rfpp's layout (rfpp.pairs.shards): shard-<k>.images.npy (uint8 (N_k, C, H, W), the PNGs' bytes),
shard-<k>.labels.npy (int64, −1 unconditional), shard-<k>.states.npy (uint64 (N_k, 4), the PCG64 states: the
noise is regenerated from them on the fly, never stored), shard-<k>.json, `names.txt` (item i's z.zip name on
line i) and manifest.json with the set's fingerprint (stage "pairs", the sha256 of the three source files as
inputs) and noise section `kind: pcg64-states`; `rfpp.pairs.PairDataset` verifies and reads it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rfpp.atomic import atomic_write, write_json, write_text
from rfpp.checkpoints import file_sha256
from rfpp.pairs import pcg64
from rfpp.pairs.manifest import MANIFEST_NAME, PairDataset, finalize
from rfpp.pairs.shards import FINGERPRINT_FORMAT, PairSetError, PairSpec, shard_files, shard_lock
from rfpp.provenance import fingerprint

NAMES_FILE = "names.txt"
IMPORT_FORMAT = "reference-generate_edm"


@dataclass(frozen=True)
class PairArchive:
    """The index of a paper pair set: per item (sorted z.zip names) its noise entry, image entry, state, label."""

    noise_names: list[str]
    image_names: list[str]
    states: np.ndarray  # uint64 (N, 4), rfpp.pairs.pcg64.pack_states
    labels: np.ndarray  # int64 (N,), −1 unconditional
    label_dim: int


def _open_zip(path: Path, what: str) -> zipfile.ZipFile:
    if not path.is_file():
        raise PairSetError(f"{what} {path} does not exist; pass the paper's {what} (see docs/interop.md)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise PairSetError(f"{what} {path} is not a readable zip archive ({err})") from err


def _read_labels(path: Path, image_names: list[str], label_dim: int | None) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise PairSetError(f"labels file {path} does not exist; pass the set's images_labels.csv")
    table: dict[str, int] = {}
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            try:
                table[row[0]] = int(row[1])
            except (IndexError, ValueError):
                raise PairSetError(f"{path} line {number}: expected 'image name,label', got {row!r}") from None
    missing = [name for name in image_names if name not in table]
    if missing:
        raise PairSetError(f"{path} has no label for {len(missing)} image(s), first {missing[0]!r}; pass the "
                           "images_labels.csv written with these samples")
    labels = np.array([table[name] for name in image_names], dtype=np.int64)
    dim = int(labels.max()) + 1 if label_dim is None else int(label_dim)
    if labels.size and (labels.min() < 0 or labels.max() >= dim):
        raise PairSetError(f"{path} holds labels outside [0, {dim}) (label_dim {dim}); pass --label-dim")
    return labels, dim


def read_archive(images: str | os.PathLike, noise: str | os.PathLike, labels: str | os.PathLike | None = None,
                 label_dim: int | None = None) -> PairArchive:
    """Index the paper's pair set without decoding its images; PairSetError for a z.zip entry without its image,
    a state record of the wrong size, or a missing label."""
    images, noise = Path(images), Path(noise)
    with _open_zip(noise, "noise archive") as zn, _open_zip(images, "image archive") as zi:
        entries = sorted((info for info in zn.infolist() if not info.is_dir()), key=lambda info: info.filename)
        if not entries:
            raise PairSetError(f"noise archive {noise} holds no state records")
        have = {info.filename for info in zi.infolist() if not info.is_dir()}
        image_names = [os.path.splitext(info.filename)[0] + ".png" for info in entries]
        records = []
        for info, image in zip(entries, image_names, strict=True):
            if image not in have:
                raise PairSetError(f"{noise} entry {info.filename!r} has no image {image!r} in {images}; the two "
                                   "archives are not of the same generate_edm.py run (or the image archive is "
                                   "incomplete)")
            try:
                records.append(pcg64.parse_record(zn.read(info), f"{noise} entry {info.filename!r}"))
            except ValueError as err:
                raise PairSetError(str(err)) from None
        states = pcg64.pack_states(records)
    names = [info.filename for info in entries]
    if labels is None:
        if label_dim:
            raise PairSetError(f"label_dim {label_dim} needs the set's images_labels.csv (--labels)")
        return PairArchive(names, image_names, states, np.full(len(names), -1, np.int64), 0)
    table, dim = _read_labels(Path(labels), image_names, label_dim)
    return PairArchive(names, image_names, states, table, dim)


def _decode(data: bytes, name: str) -> np.ndarray:
    """A PNG → uint8 (C, H, W) (grey: C = 1, RGB: C = 3), as the paper's loader reads it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "RGB"):
                raise PairSetError(f"image {name!r} is of PIL mode {image.mode}; the paper's sets are RGB or L")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError) as err:
        raise PairSetError(f"image {name!r} is not a readable PNG ({err})") from err
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))


def _open_npy(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """A .npy memmap at a temporary name beside `path`; `_commit` moves it into place."""
    return np.lib.format.open_memmap(path.with_name(f".{path.name}.tmp"), mode="w+", dtype=dtype, shape=shape)


def _commit(memmap: np.memmap, path: Path) -> None:
    memmap.flush()
    del memmap
    os.replace(path.with_name(f".{path.name}.tmp"), path)


def _clear(out_dir: Path, overwrite: bool) -> None:
    leftovers = [p for p in out_dir.iterdir() if not p.name.startswith(".")] if out_dir.is_dir() else []
    if not leftovers:
        return
    ours = [p for p in leftovers if p.name in (MANIFEST_NAME, NAMES_FILE, "config.yaml") or p.name.startswith("shard-")]
    if not overwrite or len(ours) != len(leftovers):
        raise PairSetError(f"{out_dir} is not empty; choose an empty folder"
                           + ("" if len(ours) != len(leftovers) else " (or pass --overwrite to replace the pair set "
                                                                     "in it)"))
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # first: no manifest may describe half-replaced shards
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def import_pairs(images: str | os.PathLike, noise: str | os.PathLike, out_dir: str | os.PathLike,
                 labels: str | os.PathLike | None = None, label_dim: int | None = None, num_shards: int = 1,
                 overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Import the paper's `samples.zip` + `z.zip` (+ `images_labels.csv`) into `out_dir`; returns the manifest.

    Item i is the i-th entry of z.zip in sorted name order; its noise is regenerated from the recorded PCG64
    state (float64 normals cast to float32), its image is the PNG's bytes, its label the CSV's (−1 without)."""
    images, noise, out_dir = Path(images), Path(noise), Path(out_dir)
    archive = read_archive(images, noise, labels, label_dim)
    count = len(archive.noise_names)
    with zipfile.ZipFile(images) as zi:
        first = _decode(zi.read(archive.image_names[0]), archive.image_names[0])
    spec = PairSpec(count=count, num_shards=num_shards, chunk=max(1, math.ceil(count / num_shards)), seed=0,
                    shape=tuple(int(s) for s in first.shape), label_dim=archive.label_dim)
    sources = {"images": file_sha256(images), "noise": file_sha256(noise)}
    if labels is not None:
        sources["labels"] = file_sha256(labels)
    fp = fingerprint("pairs", FINGERPRINT_FORMAT, {"import": {"format": IMPORT_FORMAT, "spec": asdict(spec)}},
                     sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir, overwrite)
    t0 = time.perf_counter()
    with zipfile.ZipFile(images) as zi, contextlib.ExitStack() as locks:
        for k in range(num_shards):
            locks.enter_context(shard_lock(out_dir, k))
        for k in range(num_shards):
            rows = spec.shard_range(k)
            files = shard_files(out_dir, k)
            pixels = _open_npy(files["images"], (len(rows), *spec.shape), np.uint8)
            try:
                for row, i in enumerate(rows):
                    image = _decode(zi.read(archive.image_names[i]), archive.image_names[i])
                    if image.shape != spec.shape:
                        raise PairSetError(f"image {archive.image_names[i]!r} is {image.shape} (C, H, W), the "
                                           f"first image is {spec.shape}: a pair set holds images of one size")
                    pixels[row] = image
            except BaseException:
                Path(pixels.filename).unlink(missing_ok=True)
                raise
            _commit(pixels, files["images"])
            _save_npy(files["labels"], archive.labels[rows.start:rows.stop])
            _save_npy(files["states"], archive.states[rows.start:rows.stop])
            record = {"shard": k, "num_shards": num_shards, "start": rows.start, "stop": rows.stop,
                      "sha256": {key: file_sha256(files[key]) for key in ("images", "labels", "states")},
                      "seconds": {"import": round(time.perf_counter() - t0, 4)}, "spec": asdict(spec),
                      "fingerprint": fp}
            write_json(files["record"], record)
    write_text(out_dir / NAMES_FILE, "".join(f"{name}\n" for name in archive.noise_names))
    info = {"imported": {"format": IMPORT_FORMAT, "images": str(images), "noise": str(noise),
                         "labels": None if labels is None else str(labels), "sha256": sources,
                         "order": "sorted z.zip entry names", "names": NAMES_FILE,
                         "names_sha256": file_sha256(out_dir / NAMES_FILE)},
            "teacher": {"source": "the paper's generate_edm.py (imported)"}}
    manifest = finalize(out_dir, spec, info, fingerprint=fp)
    log(f"imported {count} pairs of {spec.shape} images{f', {spec.label_dim} classes' if spec.label_dim else ''} "
        f"into {out_dir} ({num_shards} shard(s))")
    return manifest


def check_pair_source(path: str | os.PathLike, shape: tuple[int, int, int] | None = None,
                      label_dim: int | None = None) -> dict:
    """Verify a pair set directory (rfpp's own or imported: files, sha256, noise check) and, when given, that its
    images are `shape` and its labels of `label_dim` classes; returns its manifest. What a profile's
    `pairs.source: PATH` should call before the pipeline skips pair generation."""
    path = Path(path)
    dataset = PairDataset(path, verify=True)
    spec = dataset.spec
    if shape is not None and tuple(spec.shape) != tuple(shape):
        raise PairSetError(f"the pair set {path} holds {tuple(spec.shape)} images, the profile's networks make "
                           f"{tuple(shape)}")
    if label_dim is not None and spec.label_dim != label_dim:
        raise PairSetError(f"the pair set {path} has {spec.label_dim} classes, the profile's teacher {label_dim}")
    return dataset.manifest
