"""Few-step sampling from a student, sharded and reproducible; sample files; inversion and translation.

Sample i of a run uses the noise `make_noise(seed, [i])` (rfpp.pairs.noise) and, for a class-conditional
network, the label given by the user (cycled) or `make_labels(seed, [i], label_dim)`; so any shard
(`shard_indices(num_samples, shard, num_shards)`) produces exactly the samples a single run would.

Sample files (`write_samples`):
- ``<stem>.npz``: ``images`` uint8 (N, C, H, W) (docs/conventions.md, "Images on disk"), ``labels`` int64 (N,)
  (−1 unconditional), ``indices`` int64 (N,) (the sample indices), ``meta`` a JSON string (0-d array);
- or ``<stem>/`` a folder of PNGs, or ``<stem>.zip`` an EDM dataset zip (labels in dataset.json);
- always ``<stem>.json`` (the same meta) and ``<stem>.png`` (a grid of the first samples).
Shards are always .npz (``<stem>.shard-<i>-of-<n>.npz``); `merge_shards` joins them in index order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfpp.checkpoints import CheckpointError, file_sha256, load_model
from rfpp.eval.kinds import FORMATS
from rfpp.images import atomic_write, from_uint8, save_grid, save_png_folder, to_uint8
from rfpp.pairs.noise import NOISE_RECIPE, make_labels, make_noise
from rfpp.provenance import fingerprint
from rfpp.sampling import invert, sample, straightness_per_sample
from rfpp.sampling.grids import nfe_for_steps

FINGERPRINT_FORMAT = "rfpp.samples/1"  # of a sample set's fingerprint (`sample_meta`)


class SamplesError(ValueError):
    """A sample file that is missing, malformed, or inconsistent with its shards."""


# --------------------------------------------------------------------------------------------- students


def _normalise(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_normalise(v) for v in value)
    return value


ARCH_KEYS_IGNORED = ("dropout",)


def check_architecture(info: dict[str, Any], config: Any, source: str) -> None:
    """Refuse a model file whose network differs from the profile's teacher architecture."""
    arch, kwargs = info.get("arch"), dict(info.get("net_kwargs", {}))
    if config.teacher.arch and arch != config.teacher.arch:
        raise CheckpointError(f"{source} holds a {arch}, but profile {config.profile!r} uses a "
                              f"{config.teacher.arch} (teacher.arch)")
    for key, want in config.teacher.net.items():
        if key in ARCH_KEYS_IGNORED:
            continue
        if _normalise(kwargs.get(key)) != _normalise(want):
            raise CheckpointError(f"{source} holds a network of another configuration: {key}={kwargs.get(key)!r}, "
                                  f"but profile {config.profile!r} has teacher.net.{key}={want!r}")
    res = kwargs.get("img_resolution")
    if res is not None and res != config.data.resolution:
        raise CheckpointError(f"{source} generates {res}x{res} images, but profile {config.profile!r} works at "
                              f"data.resolution={config.data.resolution}")


def load_student(path: str | Path, config: Any | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An rfpp model file → (EDMVelocity in eval mode, info with 'sha256', 'step', 'ema').

    With `config`, the architecture is checked against the profile's teacher (CheckpointError otherwise).
    """
    velocity, info = load_model(path)
    if config is not None:
        check_architecture(info, config, str(path))
    meta = dict(info.get("meta") or {})
    info = dict(info)
    info["sha256"] = file_sha256(path)
    info["step"] = meta.get("step", meta.get("steps", meta.get("train_steps")))
    weights = meta.get("weights")
    info["ema"] = weights == "ema" if weights is not None else meta.get("ema", meta.get("is_ema"))
    info["ema_decay"] = meta.get("ema") if weights is not None else None
    return velocity, info


# --------------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that decides the samples of one sample set (its fingerprint, recorded in the sample file's meta).

    Made from the profile's `sample` section by `of` (its defaults and checks are rfpp.config's); `nfe` None
    means the user grid `schedule`; `extra` is recorded as is (and is part of the fingerprint)."""

    nfe: int | None
    solver: str
    update: str
    schedule: list[float] | None
    t_start: float
    seed: int
    num_samples: int
    batch: int
    class_labels: list[int] | None
    straightness_samples: int
    extra: dict[str, Any]

    @classmethod
    def of(cls, sample: Any, nfe: int | None, class_labels: list[int] | None = None) -> SamplingSpec:
        """The spec of NFE `nfe` (None: `sample.schedule`) from a profile's `sample` section."""
        return cls(nfe=nfe, solver=sample.solver, update=sample.update, schedule=sample.schedule,
                   t_start=sample.t_start, seed=sample.seed, num_samples=sample.num_samples, batch=sample.batch,
                   class_labels=class_labels, straightness_samples=sample.straightness_samples, extra={})

    @property
    def network_evaluations(self) -> int:
        """The NFE of the set: `nfe`, or what the user grid costs (Heun: 2 per step but 1 on the last)."""
        if self.nfe is not None:
            return self.nfe
        return nfe_for_steps(len(self.schedule) - (self.schedule[-1] == 0), self.solver)


def shard_indices(num_samples: int, shard: int = 0, num_shards: int = 1) -> range:
    """The contiguous block of sample indices of one shard."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: need 0 <= shard < num_shards")
    return range(shard * num_samples // num_shards, (shard + 1) * num_samples // num_shards)


def labels_for(indices: Sequence[int], seed: int, label_dim: int, given: Sequence[int] | None) -> torch.Tensor:
    """Class labels of the samples: the given list cycled by index, uniform per index, or −1 (unconditional)."""
    if label_dim == 0:
        if given:
            raise ValueError("class labels were given, but the network is unconditional (label_dim 0)")
        return torch.full((len(indices),), -1, dtype=torch.int64)
    if given:
        bad = [c for c in given if not 0 <= c < label_dim]
        if bad:
            raise ValueError(f"class labels {bad} are outside [0, {label_dim})")
        return torch.tensor([given[i % len(given)] for i in indices], dtype=torch.int64)
    return make_labels(seed, indices, label_dim)


@torch.no_grad()
def generate(velocity: torch.nn.Module, spec: SamplingSpec, indices: Sequence[int], device: torch.device,
             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Sample the given indices → (uint8 images (N, C, H, W), labels (N,), straightness or None).

    Straightness is measured on the samples with index < spec.straightness_samples (None if none of them is
    in `indices`).
    """
    velocity = velocity.to(device).eval()
    shape = (velocity.img_channels, velocity.img_resolution, velocity.img_resolution)
    indices = list(indices)
    images = torch.empty((len(indices), *shape), dtype=torch.uint8)
    labels = labels_for(indices, spec.seed, velocity.label_dim, spec.class_labels)
    s_sum, s_count = 0.0, 0
    batches = range(0, len(indices), spec.batch)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling {len(indices)} images, NFE {spec.nfe or 'grid'}", unit="batch")
    for start in batches:
        chunk = indices[start:start + spec.batch]
        noise = make_noise(spec.seed, chunk, shape).to(device)
        lab = labels[start:start + len(chunk)].to(device) if velocity.label_dim else None
        want_traj = chunk[0] < spec.straightness_samples
        out = sample(velocity, noise, nfe=None if spec.schedule else spec.nfe, schedule=spec.schedule,
                     solver=spec.solver, update=spec.update, class_labels=lab, return_trajectory=want_traj,
                     t_start=spec.t_start)
        if want_traj:
            out, traj = out
            per = straightness_per_sample(traj)
            keep = torch.tensor([i < spec.straightness_samples for i in chunk])
            s_sum += float(per.cpu()[keep].sum())
            s_count += int(keep.sum())
        images[start:start + len(chunk)] = to_uint8(out.float().cpu())
    return images, labels, (s_sum / s_count if s_count else None)


def _grid_nrow(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def stem_of(path: str | Path) -> Path:
    """The sample set's path without its format suffix (samples/<arm>/seed0/nfe2.npz → samples/<arm>/seed0/nfe2)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".zip", ".png", ".json") else path


def lock_path(path: str | Path) -> Path:
    """The lock a writer of a sample set holds (rfpp.provenance.output_lock): samples/<arm>/.nfe2.lock for
    samples/<arm>/seed0/nfe2.npz, .nfe2.shard-0-of-4.lock for a shard."""
    stem = stem_of(path)
    return stem.parent / f".{stem.name}.lock"


def with_ext(stem: Path, ext: str) -> Path:
    """`stem` + `ext` (not Path.with_suffix, which would eat a dotted stem such as nfe2.shard-0-of-4)."""
    return Path(f"{stem}{ext}")


def shard_path(path: str | Path, shard: int, num_shards: int) -> Path:
    return Path(f"{stem_of(path)}.shard-{shard}-of-{num_shards}.npz")


def write_samples(path: str | Path, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int],
                  meta: dict[str, Any], fmt: str = "npz", grid: int = 64, grid_scale: int = 1,
                  write_grid: bool = True) -> dict[str, Path]:
    """Write a sample set (see the module docstring); returns {'samples', 'meta', 'grid'} paths."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown sample format {fmt!r}; choose one of {FORMATS}")
    stem = stem_of(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, format=fmt, num_samples=int(images.shape[0]))
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    out: dict[str, Path] = {}
    if fmt == "npz":
        target = with_ext(stem, ".npz")

        def dump(handle) -> None:
            np.savez(handle, images=images.numpy(), labels=labels.numpy().astype(np.int64),
                     indices=np.asarray(list(indices), dtype=np.int64), meta=np.array(text))

        out["samples"] = atomic_write(target, dump)
    elif fmt == "png":
        save_png_folder(images, stem, start_index=int(indices[0]) if len(indices) else 0)
        out["samples"] = stem
    else:
        from rfpp.data import write_edm_zip

        out["samples"] = write_edm_zip(images, labels.numpy() if bool((labels >= 0).all()) else None,
                                       with_ext(stem, ".zip"))
    out["meta"] = atomic_write(with_ext(stem, ".json"), lambda f: f.write(text.encode()))
    if write_grid and images.shape[0]:
        shown = images[:grid]
        out["grid"] = save_grid(shown, with_ext(stem, ".png"), nrow=_grid_nrow(shown.shape[0]), scale=grid_scale)
    return out


def read_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A sample set (.npz, PNG folder or EDM .zip) → (uint8 images (N, C, H, W), labels (N,), meta)."""
    path = Path(path)
    if not path.exists():
        raise SamplesError(f"samples {path} do not exist; run `rfpp sample` first (or check the path)")
    side = with_ext(stem_of(path), ".json")
    meta: dict[str, Any] = {}
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                images = torch.from_numpy(data["images"])
                labels = torch.from_numpy(data["labels"]) if "labels" in data else torch.full(
                    (images.shape[0],), -1, dtype=torch.int64)
                if "meta" in data:
                    meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise SamplesError(f"{path} is not a readable sample file ({type(err).__name__}: {err})") from err
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise SamplesError(f"{path}: 'images' must be uint8 (N, C, H, W), got {images.dtype} "
                               f"{tuple(images.shape)}")
        return images, labels.long(), meta
    from rfpp.data import open_dataset

    ds = open_dataset(path)
    images = torch.stack([to_uint8(ds[i][0]) for i in range(len(ds))]) if len(ds) else torch.empty(0, dtype=torch.uint8)
    labels = torch.as_tensor(ds.labels, dtype=torch.int64)
    if side.exists():
        meta = json.loads(side.read_text())
    return images, labels, meta


def merge_shards(path: str | Path, num_shards: int, fmt: str = "npz", grid: int = 64,
                 grid_scale: int = 1) -> dict[str, Path]:
    """Join `<stem>.shard-<i>-of-<n>.npz` (all of them, consistent meta, indices 0…N−1) into one sample set."""
    parts = [shard_path(path, i, num_shards) for i in range(num_shards)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise SamplesError(f"cannot merge: {len(missing)} of {num_shards} shards are missing (e.g. {missing[0]})")
    images, labels, indices, metas = [], [], [], []
    for p in parts:
        with np.load(p, allow_pickle=False) as data:
            images.append(torch.from_numpy(data["images"]))
            labels.append(torch.from_numpy(data["labels"]))
            indices.append(data["indices"])
            metas.append(json.loads(str(data["meta"])))
    keys = ("nfe", "solver", "update", "schedule", "t_start", "seed", "total_samples", "checkpoint_sha256",
            "class_labels", "fingerprint")
    for m in metas[1:]:
        diff = [k for k in keys if m.get(k) != metas[0].get(k)]
        if diff:
            raise SamplesError(f"cannot merge: shards differ in {', '.join(diff)}")
    order = np.concatenate(indices)
    total = metas[0].get("total_samples", len(order))
    if not np.array_equal(order, np.arange(total)):
        raise SamplesError(f"cannot merge: the shards' indices do not cover 0..{total - 1} exactly once")
    meta = {k: v for k, v in metas[0].items() if k not in ("shard", "num_shards", "straightness")}
    meta["merged_from"] = num_shards
    s = [m.get("straightness") for m in metas if m.get("straightness") is not None]
    meta["straightness"] = s[0] if s else None
    out = write_samples(path, torch.cat(images), torch.cat(labels), order.tolist(), meta, fmt=fmt, grid=grid,
                        grid_scale=grid_scale)
    return out


def sample_meta(spec: SamplingSpec, info: dict[str, Any], checkpoint: str | Path, straightness: float | None,
                shard: int, num_shards: int, device: torch.device) -> dict[str, Any]:
    """The protocol of a sample set, stored with it; `fingerprint` (rfpp.provenance) is what made it: the
    SamplingSpec used and the student's verified tensors_sha256 (`checkpoint_tensors_sha256`)."""
    made_by = fingerprint("sample", FINGERPRINT_FORMAT, asdict(spec), {"student": info.get("tensors_sha256")})
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": info.get("sha256"),
            "checkpoint_tensors_sha256": info.get("tensors_sha256"), "fingerprint": made_by,
            "checkpoint_step": info.get("step"), "ema": info.get("ema"), "ema_decay": info.get("ema_decay"),
            "arch": info.get("arch"),
            "nfe": spec.nfe, "solver": spec.solver, "update": spec.update, "schedule": spec.schedule,
            "t_start": None if spec.schedule else spec.t_start,
            "seed": spec.seed, "total_samples": spec.num_samples, "class_labels": spec.class_labels,
            "noise": NOISE_RECIPE, "straightness": straightness,
            "straightness_samples": spec.straightness_samples, "shard": shard, "num_shards": num_shards,
            "device": str(device), **spec.extra, "spec": asdict(spec)}


# ----------------------------------------------------------------------------------- inversion / translation


@torch.no_grad()
def invert_and_decode(velocity: torch.nn.Module, images: torch.Tensor, source_labels: torch.Tensor | None,
                      target_labels: torch.Tensor | None, invert_nfe: int, decode_nfe: int, solver: str,
                      update: str, device: torch.device | None, t_start: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [−1, 1] → noise (inversion in `invert_nfe` steps with `source_labels`) → images decoded in
    `decode_nfe` steps from t₀ = `t_start` with `target_labels` (the same class: reconstruction; another:
    translation). The settings are the profile's (sample.solver, sample.update, sample.t_start)."""
    device = device or torch.device("cpu")
    velocity = velocity.to(device).eval()
    x = images.to(device)
    src = source_labels.to(device) if source_labels is not None else None
    dst = target_labels.to(device) if target_labels is not None else None
    noise = invert(velocity, x, nfe=invert_nfe, class_labels=src, solver=solver)
    decoded = sample(velocity, noise, nfe=decode_nfe, solver=solver, update=update, class_labels=dst,
                     t_start=t_start)
    return noise.float().cpu(), decoded.float().cpu()


def load_images(spec: str, resolution: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [−1, 1] and labels from a dataset spec ('digits', a folder, an EDM zip) or a sample .npz."""
    if str(spec).endswith(".npz"):
        u, labels, _ = read_samples(spec)
        n = u.shape[0]
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"image indices {bad[:3]} are outside the {n} images of {spec}")
        return from_uint8(u[list(indices)]), labels[list(indices)]
    from rfpp.data import open_dataset

    ds = open_dataset(spec, resolution=resolution)
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise ValueError(f"image indices {bad[:3]} are outside the {len(ds)} images of {spec}")
    items = [ds[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def before_after_grid(before: torch.Tensor, after: Sequence[torch.Tensor], path: str | Path, scale: int = 1) -> Path:
    """A grid with one row of originals and one row per result below them."""
    rows = torch.cat([before.float().clamp(-1, 1)] + [a.float().clamp(-1, 1) for a in after])
    return save_grid(rows, path, nrow=before.shape[0], scale=scale)
