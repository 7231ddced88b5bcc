"""Sharded, resumable pair generation and the manifest that makes a pair set verifiable.

Layout of a pair set directory:
    shard-<k>.images.npy   uint8 (N_k, C, H, W), the teacher's images (docs/conventions.md, "Images on disk")
    shard-<k>.labels.npy   int64 (N_k,), −1 for an unconditional teacher
    shard-<k>.json         written last: the shard's index range, the sha256 of both arrays, its fingerprint
    manifest.json          the whole set: teacher, sampler, seed, count, shards and their sha256, fingerprint
    .shard-<k>.lock        held (flock) while shard k is made: a second writer of the shard fails at once
While a shard is being made its finished chunks sit in shard-<k>.parts/chunk-<c>.npz (images, labels, the
set's fingerprint as JSON, its index range [start, stop]); a killed run resumes from them.

Provenance: every chunk, shard record and the manifest carry the pair set's fingerprint (rfpp.provenance):
stage "pairs", format "rfpp.pairs/2", the `pairs` settings and the teacher model file's tensors_sha256
(rfpp.pairs.stage.pairs_fingerprint). A chunk is reused only with the same fingerprint id and indices, a
finished shard is kept only with the same fingerprint id and spec; anything else is made again (the line
printed names the first setting that differs). The old shard files, and a manifest that lists them, are
replaced only once the new shard's data is complete. The teacher's outputs are checked to be finite before
they are encoded to uint8 (NaN would silently become 128).

The unit of work is a chunk of `chunk` consecutive indices (the batch); shard k of n takes whole
chunks, so the images of index i never depend on how the range was split, and the same seed gives
byte-identical arrays. Noise is regenerated from (seed, index) (rfpp.pairs.noise).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rfpp import paths
from rfpp.atomic import atomic_write, write_json
from rfpp.checkpoints import file_sha256
from rfpp.images import to_uint8
from rfpp.pairs import pcg64
from rfpp.pairs.noise import make_labels, make_noise
from rfpp.provenance import canonical, difference, fingerprint, output_lock

TeacherFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

FORMAT = "rfpp.pairs"
VERSION = 2
FINGERPRINT_FORMAT = f"{FORMAT}/{VERSION}"  # the `format` of a pair set's fingerprint
MANIFEST_NAME = "manifest.json"


class PairSetError(ValueError):
    """A pair set that is incomplete, corrupted, or inconsistent with its manifest."""


@dataclass(frozen=True)
class PairSpec:
    """What a pair set is: `count` pairs of images of `shape` (C, H, W), split into `num_shards`."""

    count: int
    num_shards: int
    chunk: int
    seed: int
    shape: tuple[int, int, int]
    label_dim: int = 0

    def __post_init__(self) -> None:
        # named by the profile keys they come from (`chunk` is pairs.batch)
        for name, key in (("count", "pairs.count"), ("num_shards", "pairs.num_shards"), ("chunk", "pairs.batch")):
            if getattr(self, name) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"pairs.seed must be non-negative, got {self.seed}")

    @property
    def num_chunks(self) -> int:
        return -(-self.count // self.chunk)

    def chunk_range(self, chunk: int) -> range:
        return range(chunk * self.chunk, min((chunk + 1) * self.chunk, self.count))

    def shard_chunks(self, shard: int) -> range:
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} is out of range for {self.num_shards} shards (0..{self.num_shards - 1})")
        return range(shard * self.num_chunks // self.num_shards, (shard + 1) * self.num_chunks // self.num_shards)

    def shard_range(self, shard: int) -> range:
        chunks = self.shard_chunks(shard)
        if len(chunks) == 0:
            return range(0)
        return range(self.chunk_range(chunks[0]).start, self.chunk_range(chunks[-1]).stop)


def spec_fingerprint(spec: PairSpec) -> dict[str, Any]:
    """The fingerprint of a pair set made by a caller that gives none: the spec alone (the teacher function is
    opaque here; the pairs stage's fingerprint adds the settings and the teacher's digest)."""
    return fingerprint("pairs", FINGERPRINT_FORMAT, {"spec": asdict(spec)})


def shard_files(out_dir: str | Path, shard: int) -> dict[str, Path]:
    """rfpp.paths' shard files, plus the folder of its finished chunks ("parts"), its lock, and the PCG64 states
    of an imported set (rfpp.pairs.pcg64; absent in rfpp's own sets)."""
    out_dir = Path(out_dir)
    return {**paths.shard_files(out_dir, shard), "parts": out_dir / f"shard-{shard}.parts",
            "states": pcg64.states_file(out_dir, shard),
            "lock": out_dir / f".shard-{shard}.lock"}


def shard_lock(out_dir: str | Path, shard: int) -> contextlib.AbstractContextManager[Path]:
    """The lock held while shard `shard` is written (or read by finalize)."""
    return output_lock(shard_files(out_dir, shard)["lock"], f"pairs shard {shard} in {out_dir}")


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda h: np.save(h, array, allow_pickle=False))


def _chunk_difference(path: Path, indices: range | None, fp: dict[str, Any]) -> str | None:
    """None when the chunk file carries fingerprint `fp` and the index range `indices`; else why not."""
    try:
        with np.load(path, allow_pickle=False) as data:
            recorded = json.loads(str(data["fingerprint"]))
            start, stop = (int(v) for v in data["indices"])
    except (OSError, ValueError, KeyError, EOFError, TypeError):
        return "it is unreadable or carries no provenance record"
    why = difference(recorded, fp)
    if why is None and (indices is None or (start, stop) != (indices.start, indices.stop)):
        why = f"it holds pairs {start}..{stop - 1}, not the chunk's pairs"
    return why


def _load_chunk(path: Path, indices: range, fp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """A finished chunk with fingerprint `fp` and these indices, or None (then it is redone)."""
    if _chunk_difference(path, indices, fp) is not None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (images, labels) if len(images) == len(indices) == len(labels) else None


def _drop_stale_chunks(parts: Path, spec: PairSpec, shard: int, fp: dict[str, Any]) -> str | None:
    """Delete the chunk files in `parts` that another fingerprint (or another split) made; returns a line saying
    how many and why, or None when there were none."""
    ranges = {f"chunk-{c}.npz": spec.chunk_range(c) for c in spec.shard_chunks(shard)}
    stale: list[str] = []
    for path in sorted(parts.glob("chunk-*.npz")):
        why = _chunk_difference(path, ranges.get(path.name), fp)
        if why is not None:
            stale.append(why)
            path.unlink()
    if not stale:
        return None
    return (f"shard {shard}: {len(stale)} unfinished chunk(s) in {parts} were made with other settings "
            f"({stale[0]}); making them again")


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record (a shard's, the manifest), or None when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record_difference(record: dict[str, Any] | None, spec: PairSpec, fp: dict[str, Any]) -> str | None:
    """None when a shard record carries fingerprint `fp` and `spec`; else the first thing that differs."""
    if record is None:
        return "its record is unreadable"
    why = difference(record.get("fingerprint"), fp)
    if why is None and record.get("spec") != json.loads(json.dumps(asdict(spec))):
        why = f"its spec {record.get('spec')} (recorded) vs {asdict(spec)} (now)"
    return why


def shard_is_finished(out_dir: str | Path, shard: int) -> bool:
    """Whether the shard's record and arrays exist (whatever made them: see `record_difference`)."""
    files = shard_files(out_dir, shard)
    return files["record"].exists() and files["images"].exists() and files["labels"].exists()


def _check_finite(images: torch.Tensor, indices: range, shard: int, teacher_file: str | None) -> None:
    """PairSetError naming the pairs whose teacher images hold NaN or inf (they would all encode to 128)."""
    finite = torch.isfinite(images).flatten(1).all(1).cpu()
    if bool(finite.all()):
        return
    bad = [indices[i] for i in (~finite).nonzero().flatten().tolist()]
    listed = ", ".join(map(str, bad[:8])) + (f" … ({len(bad)} in all)" if len(bad) > 8 else "")
    what = f"the teacher {teacher_file}" if teacher_file else "the teacher"
    raise PairSetError(f"{what} gave non-finite images (NaN or inf) for pair(s) {listed} (shard {shard}); no shard "
                       "was written: remake the teacher (delete it and run `rfpp teacher`), then run `rfpp pairs` "
                       "again")


def generate_shard(out_dir: str | Path, spec: PairSpec, shard: int, teacher: TeacherFn,
                   device: torch.device | str = "cpu", progress: bool = True, fingerprint: dict | None = None,
                   teacher_file: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Make shard `shard` of the pair set (or return its record if it is finished with the same fingerprint).

    `teacher(noise, labels)` maps float32 noise (N, C, H, W) on `device` (and int64 labels or None)
    to images in [−1, 1]. `fingerprint`: the set's (default `spec_fingerprint(spec)`), stored in every chunk
    and the record. Finished chunks with this fingerprint are kept in shard-<k>.parts/ so that a killed run
    redoes only unfinished chunks; the shard's arrays and record are written atomically, the record last.
    A shard (or chunk) with another fingerprint is made again, with a line through `log` naming what differs.
    Holds the shard's lock throughout (LockedError at once when another process holds it); a non-finite
    teacher output raises PairSetError naming `teacher_file` and the pairs.
    """
    fp = fingerprint or spec_fingerprint(spec)
    with shard_lock(out_dir, shard):
        return _generate_shard(Path(out_dir), spec, shard, teacher, torch.device(device), progress, fp,
                               None if teacher_file is None else str(teacher_file), log)


def _generate_shard(out_dir: Path, spec: PairSpec, shard: int, teacher: TeacherFn, device: torch.device,
                    progress: bool, fp: dict[str, Any], teacher_file: str | None, log: Callable[[str], None]) -> dict:
    files = shard_files(out_dir, shard)
    if shard_is_finished(out_dir, shard):
        record = read_record(files["record"])
        why = record_difference(record, spec, fp)
        if record is not None and why is None:
            return record
        log(f"shard {shard} in {out_dir} is out of date ({why}); making it again")
    files["parts"].mkdir(parents=True, exist_ok=True)
    stale = _drop_stale_chunks(files["parts"], spec, shard, fp)
    if stale:
        log(stale)
    fp_json = np.array(canonical(fp))
    timing = {"noise": 0.0, "sampler": 0.0, "write": 0.0}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chunks = spec.shard_chunks(shard)
    images_parts, labels_parts = [], []
    bar = tqdm(chunks, desc=f"pairs shard {shard}/{spec.num_shards}", unit="chunk", disable=not progress)
    for chunk in bar:
        part = files["parts"] / f"chunk-{chunk}.npz"
        indices = spec.chunk_range(chunk)
        done = _load_chunk(part, indices, fp) if part.exists() else None
        if done is None:
            t0 = time.perf_counter()
            noise = make_noise(spec.seed, indices, spec.shape)
            labels = make_labels(spec.seed, indices, spec.label_dim)
            noise = noise.to(device, non_blocking=True)
            sync()
            t1 = time.perf_counter()
            with torch.no_grad():
                images = teacher(noise, labels.to(device) if spec.label_dim else None).float()
            _check_finite(images, indices, shard, teacher_file)
            images = to_uint8(images).cpu().numpy()
            sync()
            t2 = time.perf_counter()
            labels_np = labels.numpy()
            arrays = {"images": images, "labels": labels_np, "fingerprint": fp_json,
                      "indices": np.array([indices.start, indices.stop], dtype=np.int64)}
            atomic_write(part, lambda h, a=arrays: np.savez(h, **a))
            timing["noise"] += t1 - t0
            timing["sampler"] += t2 - t1
            timing["write"] += time.perf_counter() - t2
            done = (images, labels_np)
        images_parts.append(done[0])
        labels_parts.append(done[1])

    t0 = time.perf_counter()
    c, h, w = spec.shape
    images = np.concatenate(images_parts) if images_parts else np.zeros((0, c, h, w), np.uint8)
    labels = np.concatenate(labels_parts) if labels_parts else np.zeros((0,), np.int64)
    # the new data is complete: only now are the old shard and a manifest that lists it replaced
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    files["record"].unlink(missing_ok=True)
    _save_npy(files["images"], np.ascontiguousarray(images))
    _save_npy(files["labels"], np.ascontiguousarray(labels.astype(np.int64)))
    timing["write"] += time.perf_counter() - t0
    rng = spec.shard_range(shard)
    record = {"shard": shard, "num_shards": spec.num_shards, "start": rng.start, "stop": rng.stop,
              "sha256": {"images": file_sha256(files["images"]), "labels": file_sha256(files["labels"])},
              "seconds": {k: round(v, 4) for k, v in timing.items()}, "spec": asdict(spec), "fingerprint": fp}
    write_json(files["record"], record)
    shutil.rmtree(files["parts"], ignore_errors=True)
    return record
