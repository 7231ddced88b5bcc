"""The pairs stage: shards of (noise, image) pairs from the profile's teacher, then the manifest.

`rfpp pairs --shard k --num-shards n` runs `run_shard`; `rfpp pairs --finalize` runs `run_finalize`;
plain `rfpp pairs` does every shard and then the manifest. The teacher is results/<profile>/teacher/
teacher.pt; the sampler, its steps and the network's dtype come from the `pairs` section.

Provenance: `pairs_fingerprint` (stage "pairs", format "rfpp.pairs/2", the resolved `pairs` section with the
number of shards in use, and the teacher model file's verified tensors_sha256) goes into every chunk, shard
record and the manifest; chunks and shards with another fingerprint are made again, and finalize refuses them
(rfpp.pairs.shards).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rfpp.atomic import write_text
from rfpp.checkpoints import file_sha256, load_model
from rfpp.config import Config
from rfpp.devices import resolve_device
from rfpp.images import to_uint8
from rfpp.pairs.generator import nfe_of, teacher_function
from rfpp.pairs.manifest import finalize
from rfpp.pairs.noise import make_labels, make_noise
from rfpp.pairs.shards import FINGERPRINT_FORMAT, PairSpec, generate_shard
from rfpp.paths import ProfilePaths
from rfpp.provenance import fingerprint, stage_settings
from rfpp.tracking import stage_run


def pair_spec(config: Config, velocity, num_shards: int | None = None) -> PairSpec:
    """The pair set's spec from the profile and the teacher network (image shape, label count)."""
    res, ch = velocity.img_resolution, velocity.img_channels
    return PairSpec(count=config.pairs.count, num_shards=num_shards or config.pairs.num_shards,
                    chunk=config.pairs.batch, seed=config.pairs.seed, shape=(ch, res, res),
                    label_dim=velocity.label_dim)


def pairs_fingerprint(config: Config, teacher_sha256: str, num_shards: int | None = None) -> dict:
    """The pair set's fingerprint: the `pairs` settings (with the number of shards in use) and the teacher."""
    settings = stage_settings(config, "pairs")
    settings["pairs"] = {**settings["pairs"], "num_shards": num_shards or config.pairs.num_shards}
    return fingerprint("pairs", FINGERPRINT_FORMAT, settings, {"teacher": teacher_sha256})


def _teacher(config: Config, paths: ProfilePaths, device: torch.device, dtype: str | None = None):
    velocity, info = load_model(paths.teacher)
    velocity = velocity.to(device)
    fn = teacher_function(velocity, config.pairs.sampler, config.pairs.steps, dtype or config.pairs.dtype)
    return velocity, info, fn


def run_shard(config: Config, shard: int, num_shards: int | None = None, paths: ProfilePaths | None = None,
              progress: bool = True) -> dict:
    """Make one shard (resuming its finished chunks); returns the shard's record."""
    paths = paths or ProfilePaths.of(config.profile)
    device = resolve_device(config.device)
    velocity, info, fn = _teacher(config, paths, device)
    spec = pair_spec(config, velocity, num_shards)
    fp = pairs_fingerprint(config, info["tensors_sha256"], spec.num_shards)
    with stage_run(config, "pairs", run_name=f"pairs-shard-{shard}") as run:
        record = generate_shard(paths.pairs_dir, spec, shard, fn, device=device, progress=progress, fingerprint=fp,
                                teacher_file=paths.teacher)
        seconds = record.get("seconds", {})
        made = record["stop"] - record["start"]
        total = sum(seconds.values())
        run.log_params({"shard": shard, "num_shards": spec.num_shards})
        if total > 0:
            run.log_metrics({"pairs/per_second": made / total, **{f"pairs/seconds_{k}": v for k, v in seconds.items()}})
    return record


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 image arrays (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def precision_check(config: Config, paths: ProfilePaths, device: torch.device, count: int = 64) -> dict:
    """PSNR of the first `count` pairs made in the configured dtype against float32 teacher inference."""
    velocity, _, fn = _teacher(config, paths, device)
    spec = pair_spec(config, velocity)
    idx = range(min(count, spec.count))
    noise = make_noise(spec.seed, idx, spec.shape).to(device)
    labels = make_labels(spec.seed, idx, spec.label_dim).to(device) if spec.label_dim else None
    with torch.no_grad():
        low = to_uint8(fn(noise, labels).float()).cpu().numpy()
        _, _, fn32 = _teacher(config, paths, device, dtype="float32")
        ref = to_uint8(fn32(noise, labels).float()).cpu().numpy()
    return {"dtype": config.pairs.dtype, "count": len(idx), "psnr_db_vs_float32": psnr_uint8(low, ref),
            "max_abs_diff_uint8": int(np.abs(low.astype(int) - ref.astype(int)).max())}


def run_finalize(config: Config, num_shards: int | None = None, paths: ProfilePaths | None = None) -> dict:
    """Verify every shard and write the manifest (with a float32 comparison when the dtype is lower)."""
    paths = paths or ProfilePaths.of(config.profile)
    velocity, info = load_model(paths.teacher)
    spec = pair_spec(config, velocity, num_shards)
    fp = pairs_fingerprint(config, info["tensors_sha256"], spec.num_shards)
    meta = info.get("meta", {})
    extra = {"teacher": {"file": str(paths.teacher), "sha256": file_sha256(paths.teacher),
                         "tensors_sha256": info["tensors_sha256"], "source": meta.get("source"),
                         "source_sha256": meta.get("sha256"), "arch": info["arch"]},
             "sampler": {"name": config.pairs.sampler, "steps": config.pairs.steps,
                         "nfe": nfe_of(config.pairs.sampler, config.pairs.steps), "dtype": config.pairs.dtype}}
    if config.pairs.dtype != "float32":
        extra["precision_check"] = precision_check(config, paths, resolve_device(config.device))
    manifest = finalize(paths.pairs_dir, spec, extra, fingerprint=fp)
    write_text(paths.pairs_dir / "config.yaml", config.to_yaml())
    return manifest
