"""Sharded, resumable pair generation and the manifest that makes a pair set verifiable.

Layout of a pair set directory:
    shard-<k>.images.npy   uint8 (N_k, C, H, W), DESIGN.md's encoding of the teacher's images
    shard-<k>.labels.npy   int64 (N_k,), −1 for an unconditional teacher
    shard-<k>.json         written last: the shard's index range and the sha256 of both arrays
    manifest.json          the whole set: teacher, sampler, seed, count, shards and their sha256, versions
While a shard is being made its finished chunks sit in shard-<k>.parts/; a killed run resumes from them.

The unit of work is a chunk of `chunk` consecutive indices (the batch); shard k of n takes whole
chunks, so the images of index i never depend on how the range was split, and the same seed gives
byte-identical arrays. Noise is regenerated from (seed, index) (rfpp.pairs.noise).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rfpp.atomic import atomic_write, write_json
from rfpp.checkpoints import file_sha256
from rfpp.images import to_uint8
from rfpp.pairs.noise import make_labels, make_noise

TeacherFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


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
        for name in ("count", "num_shards", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"pairs {name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"pairs seed must be non-negative, got {self.seed}")

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


def shard_files(out_dir: str | Path, shard: int) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"images": out_dir / f"shard-{shard}.images.npy", "labels": out_dir / f"shard-{shard}.labels.npy",
            "record": out_dir / f"shard-{shard}.json", "parts": out_dir / f"shard-{shard}.parts"}


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda h: np.save(h, array, allow_pickle=False))


def _load_chunk(path: Path, expected: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A finished chunk file, or None if it is unreadable (then it is redone)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (images, labels) if len(images) == expected == len(labels) else None


def shard_is_finished(out_dir: str | Path, shard: int) -> bool:
    files = shard_files(out_dir, shard)
    return files["record"].exists() and files["images"].exists() and files["labels"].exists()


def generate_shard(out_dir: str | Path, spec: PairSpec, shard: int, teacher: TeacherFn,
                   device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Make shard `shard` of the pair set (or return its record if it is already finished).

    `teacher(noise, labels)` maps float32 noise (N, C, H, W) on `device` (and int64 labels or None)
    to images in [−1, 1]. Finished chunks are kept in shard-<k>.parts/ so that a killed run redoes only
    unfinished chunks; the shard's arrays and record are written atomically, the record last.
    """
    files = shard_files(out_dir, shard)
    if shard_is_finished(out_dir, shard):
        return json.loads(files["record"].read_text())
    files["parts"].mkdir(parents=True, exist_ok=True)
    timing = {"noise": 0.0, "sampler": 0.0, "write": 0.0}
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    chunks = spec.shard_chunks(shard)
    images_parts, labels_parts = [], []
    bar = tqdm(chunks, desc=f"pairs shard {shard}/{spec.num_shards}", unit="chunk", disable=not progress)
    for chunk in bar:
        part = files["parts"] / f"chunk-{chunk}.npz"
        indices = spec.chunk_range(chunk)
        done = _load_chunk(part, len(indices)) if part.exists() else None
        if done is None:
            t0 = time.perf_counter()
            noise = make_noise(spec.seed, indices, spec.shape)
            labels = make_labels(spec.seed, indices, spec.label_dim)
            noise = noise.to(device, non_blocking=True)
            sync()
            t1 = time.perf_counter()
            with torch.no_grad():
                images = teacher(noise, labels.to(device) if spec.label_dim else None)
            images = to_uint8(images.float()).cpu().numpy()
            sync()
            t2 = time.perf_counter()
            labels_np = labels.numpy()
            atomic_write(part, lambda h, im=images, lb=labels_np: np.savez(h, images=im, labels=lb))
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
    _save_npy(files["images"], np.ascontiguousarray(images))
    _save_npy(files["labels"], np.ascontiguousarray(labels.astype(np.int64)))
    timing["write"] += time.perf_counter() - t0
    rng = spec.shard_range(shard)
    record = {"shard": shard, "num_shards": spec.num_shards, "start": rng.start, "stop": rng.stop,
              "sha256": {"images": file_sha256(files["images"]), "labels": file_sha256(files["labels"])},
              "seconds": {k: round(v, 4) for k, v in timing.items()}, "spec": asdict(spec)}
    write_json(files["record"], record)
    shutil.rmtree(files["parts"], ignore_errors=True)
    return record
