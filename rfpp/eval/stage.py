"""The evaluation stages: `run_sample`, `run_inversion` (invert, translate), `run_fid`, `run_report`.

Each takes the resolved configuration (every sampling setting is a `sample.*` key, the device is `device`, the FID
protocol `eval.*`; rfpp.config holds their defaults and checks) plus the invocation's own choices (arm, checkpoint,
output path, shard), writes under results/<profile>/ unless given a path, and says what it did through `log`.
Errors are the library's: ConfigError for an arm the profile lacks or an output path given to several sets, and
rfpp.devices.DeviceError (the CLI's exit 2); CheckpointError, SamplesError, FIDError, ReportError, LockedError,
NotWritableError and the like for failures (exit 1).

Provenance: a sample set is written under its lock (`lock_path`, rfpp.provenance.output_lock) and records the
student's verified tensor digest and the fingerprint of its SamplingSpec (`sample_meta`); a FID records the sha256
and fingerprint of the samples it read, which `run_report` checks against the samples now on disk (stale FIDs).
Each sample set, FID and report is one MLflow run (rfpp.tracking.stage_run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rfpp.config import Config, ConfigError
from rfpp.devices import resolve_device
from rfpp.eval.generate import (
    SamplingSpec,
    before_after_grid,
    generate,
    invert_and_decode,
    load_images,
    load_student,
    lock_path,
    merge_shards,
    read_samples,
    sample_meta,
    shard_indices,
    shard_path,
    stem_of,
    write_samples,
)
from rfpp.paths import ProfilePaths, seed_of
from rfpp.provenance import output_lock
from rfpp.tracking import stage_run

Log = Callable[[str], None]


def _seeded(config: Config, train_seed: int) -> Config:
    """The configuration a stage of training seed `train_seed` logs (Config.for_training_seed; a foreign checkpoint's
    seed label that is not in train.seeds leaves it as it is)."""
    return config.for_training_seed(train_seed) if train_seed in config.train.seeds else config


class NotWritableError(ValueError):
    """An output folder that cannot be made or written into (found before any work)."""


def check_writable(directory: Path, what: str) -> None:
    """Raise NotWritableError, naming `directory`, when it cannot be made or written into.

    (As root, os.access says yes to any existing directory; a path through a regular file is still found.)
    """
    blocker = next((p for p in [*reversed(directory.parents), directory] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotWritableError(f"cannot write {what} into {directory}: {blocker} is a file, not a directory; move it "
                               "away or pass --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NotWritableError(f"cannot write {what} into {directory}: {err.strerror or err}; make it a writable "
                               "directory or pass --out") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise NotWritableError(f"cannot write {what} into {directory}: it is not writable; fix its permissions or "
                               "pass --out")


def check_arm(config: Config, arm: str) -> None:
    """ConfigError unless `arm` is one of the profile's train.arms."""
    if arm not in config.train.arms:
        raise ConfigError(f"unknown arm {arm!r}; this profile's arms: {', '.join(config.train.arms)}")


def check_seed(config: Config, seed: int) -> None:
    """ConfigError unless `seed` is one of the profile's train.seeds."""
    if seed not in config.train.seeds:
        raise ConfigError(f"training seed {seed} is not in train.seeds {config.train.seeds}; give one of them")


def students(config: Config, checkpoint: str | Path | None = None, arm: str | None = None,
             seed: int | None = None) -> list[tuple[str, int, Path]]:
    """(arm name, training seed, model file) of: the given checkpoint, filed under `arm` (else its train/<arm>/
    folder's name or its stem) and `seed` (else its seed<k>/ folder's, else the first of train.seeds); or the final
    students of `arm` (default: every arm) and `seed` (default: every seed of train.seeds)."""
    paths = ProfilePaths.of(config.profile)
    if checkpoint:
        cp = Path(checkpoint)
        folder = cp.parent
        found = seed_of(folder) if folder.parent.parent.name == "train" else None
        if arm is None:
            arm = folder.parent.name if found is not None else cp.stem
        if seed is None:
            seed = found if found is not None else config.train.seeds[0]
        return [(arm, seed, cp)]
    if arm is not None:
        check_arm(config, arm)
    if seed is not None:
        check_seed(config, seed)
    return [(a, k, paths.student(a, k)) for a in ([arm] if arm else config.train.arms)
            for k in ([seed] if seed is not None else config.train.seeds)]


# ------------------------------------------------------------------------------------------------------ sample


def run_sample(config: Config, *, arm: str | None = None, checkpoint: str | Path | None = None,
               out: str | Path | None = None, class_labels: list[int] | None = None, shard: int = 0,
               num_shards: int = 1, merge: bool = False, progress: bool = True, log: Log = print,
               seed: int | None = None) -> list[dict[str, Path]]:
    """Sample every NFE of sample.nfe (one set on the user grid when sample.schedule is set) for each student of
    `students` (`seed`: a training seed); with `num_shards` > 1 only shard `shard` of each set (always .npz), or,
    with `merge`, join the shards into the set. Sample i is reproducible from (sample.seed, i) whatever the
    batching or sharding. Returns what each set wrote ({'samples', 'meta', 'grid'})."""
    sc = config.sample
    device = resolve_device(config.device)
    targets = students(config, checkpoint, arm, seed)
    nfes: list[int | None] = [None] if sc.schedule else list(sc.nfe)
    if out and (len(targets) > 1 or len(nfes) > 1):
        raise ConfigError("--out needs a single arm and training seed (or --checkpoint) and a single --nfe")
    paths = ProfilePaths.of(config.profile)
    written = []
    for arm_name, train_seed, cp in targets:
        student: tuple[torch.nn.Module, dict[str, Any]] | None = None  # read once for all its NFEs
        for k in nfes:
            spec = SamplingSpec.of(sc, k, class_labels)
            target = Path(out) if out else paths.samples(arm_name, train_seed, spec.network_evaluations)
            part = shard_path(target, shard, num_shards) if num_shards > 1 and not merge else target
            check_writable(stem_of(part).parent, "samples")
            with output_lock(lock_path(part), f"sample set {stem_of(part)}"):
                if merge:
                    files = merge_shards(target, num_shards, fmt=sc.format, grid=sc.grid, grid_scale=sc.grid_scale)
                    log(f"merged {num_shards} shards into {files['samples']}")
                else:
                    student = student or load_student(cp, config)
                    files = _sample_set(config, spec, arm_name, train_seed, cp, student, part, shard, num_shards,
                                        device, progress, log)
            written.append(files)
    return written


def _sample_set(config: Config, spec: SamplingSpec, arm: str, train_seed: int, checkpoint: Path,
                student: tuple[torch.nn.Module, dict[str, Any]], path: Path, shard: int, num_shards: int,
                device: torch.device, progress: bool, log: Log) -> dict[str, Path]:
    """One sample set (or one shard of it, as .npz without a grid) at `path` from `student` (load_student of
    `checkpoint`), under its MLflow run."""
    sc = config.sample
    n_eval = spec.network_evaluations
    with stage_run(_seeded(config, train_seed), "sample", arm, seed=train_seed,
                   run_name=f"sample-{arm}-seed{train_seed}-nfe{n_eval}") as run:
        run.log_params({"nfe": n_eval})
        velocity, info = student
        idx = shard_indices(spec.num_samples, shard, num_shards)
        images, labels, straightness = generate(velocity, spec, idx, device, progress=progress)
        meta = sample_meta(spec, info, checkpoint, straightness, shard, num_shards, device)
        meta.update(arm=arm, train_seed=train_seed, profile=config.profile)
        if num_shards > 1:
            files = write_samples(path, images, labels, list(idx), meta, "npz", write_grid=False)
        else:
            files = write_samples(path, images, labels, list(idx), meta, sc.format, grid=sc.grid,
                                  grid_scale=sc.grid_scale)
        if straightness is not None:
            run.log_metrics({f"straightness_nfe{n_eval}": straightness})
            if num_shards == 1:  # a shard's straightness is not the set's
                run.log_summary({f"straightness_nfe{n_eval}": straightness})
        if "grid" in files:
            run.log_image_file(files["grid"], artifact_path=f"samples/{arm}/seed{train_seed}")
    said = f", straightness {straightness:.4g}" if straightness is not None else ""
    log(f"{arm} seed {train_seed}: {len(idx)} samples at NFE {n_eval} ({spec.solver}, {spec.update}){said} -> "
        f"{files['samples']}" + (f" (grid {files['grid']})" if "grid" in files else ""))
    return files


# -------------------------------------------------------------------------------------------------- inversion


def run_inversion(config: Config, *, target_class: int | None = None, checkpoint: str | Path | None = None,
                  arm: str | None = None, images: str | None = None, indices: list[int] | None = None,
                  num_images: int = 8, nfe: int = 4, decode_nfe: int | None = None,
                  source_classes: list[int] | None = None, out: str | Path | None = None, log: Log = print
                  ) -> dict[str, Path]:
    """Invert images (`images`, default data.dataset; `indices`, default the first `num_images`) to noise in `nfe`
    steps and decode them in `decode_nfe` (default `nfe`) from t₀ = sample.t_start with sample.solver and
    sample.update: with the images' own class (reconstruction, `rfpp invert`) or `target_class` (translation,
    `rfpp translate`, class-conditional networks). Writes a before/after grid and the arrays beside it (.npz);
    returns {'grid', 'arrays'}."""
    import numpy as np

    from rfpp.images import atomic_write, to_uint8

    what = "invert" if target_class is None else "translate"
    sc = config.sample
    decode_nfe = decode_nfe or nfe
    first = None if checkpoint else config.train.seeds[0]
    arm_name, train_seed, cp = students(config, checkpoint, arm, first)[0]
    device = resolve_device(config.device)
    idx = indices or list(range(num_images))
    velocity, _ = load_student(cp, config)
    x, labels = load_images(images or config.data.dataset, config.data.resolution, idx)
    if velocity.label_dim:
        src = torch.tensor([source_classes[i % len(source_classes)] for i in range(len(idx))]) \
            if source_classes else labels
        if (src < 0).any():
            raise ValueError("the network is class-conditional but the images carry no labels; give --source-class")
        dst = src if target_class is None else torch.full_like(src, target_class)
        if target_class is not None and not 0 <= target_class < velocity.label_dim:
            raise ValueError(f"--target-class {target_class} is outside [0, {velocity.label_dim})")
    else:
        if target_class is not None:
            raise ValueError(f"{cp} is an unconditional network (label_dim 0): translation to another class "
                             "needs a class-conditional model; use `rfpp invert` for reconstruction")
        src = dst = None
    noise, decoded = invert_and_decode(velocity, x, src, dst, nfe, decode_nfe, sc.solver, sc.update, device,
                                       t_start=sc.t_start)
    to = "" if target_class is None else f"-to{target_class}"
    base = Path(out) if out else ProfilePaths.of(config.profile).root / what / \
        f"{arm_name}-seed{train_seed}-inv{nfe}-dec{decode_nfe}{to}.png"
    grid = before_after_grid(x, [decoded], base.with_suffix(".png"), scale=sc.grid_scale)
    none = torch.full((len(idx),), -1)

    def dump(handle: Any) -> None:
        np.savez(handle, noise=noise.numpy(), images=to_uint8(x).numpy(), decoded=to_uint8(decoded).numpy(),
                 source_labels=(src if src is not None else none).numpy(),
                 target_labels=(dst if dst is not None else none).numpy(),
                 indices=np.asarray(idx), t_start=np.float64(sc.t_start))

    arrays = atomic_write(base.with_suffix(".npz"), dump)
    error = float((decoded - x).abs().mean())
    log(f"{what}: {len(idx)} images inverted in {nfe} and decoded in {decode_nfe} steps (mean |x - x'| {error:.4f}); "
        f"before/after grid {grid}, arrays {arrays}")
    return {"grid": grid, "arrays": arrays}


# -------------------------------------------------------------------------------------------------------- FID


def run_fid(config: Config, *, arm: str | None = None, nfe: int | None = None, samples: str | Path | None = None,
            out: str | Path | None = None, skip_missing: bool = False, progress: bool = True, log: Log = print,
            seed: int | None = None) -> list[dict[str, Any]]:
    """FID (with eval.isc/kid/prc) of sample sets against eval.reference with eval.feature_net: `samples` (filed
    under `arm` and `seed`, else its samples/<arm>/seed<k>/ folders, else its folder and the first training seed),
    or the sets of `arm` (default every arm) and training seed `seed` (default every seed of train.seeds) at `nfe`
    (default every NFE of sample.nfe); one json per set with its full protocol and what made the samples.
    `skip_missing` passes over sets that do not exist. Returns the results."""
    from rfpp.eval.errors import FIDError
    from rfpp.eval.fid import feature_net_spec

    ev = config.eval
    paths = ProfilePaths.of(config.profile)
    if samples:
        folder = Path(samples).parent
        found = seed_of(folder)
        name = arm or (folder.parent.name if found is not None else folder.name)
        label = seed if seed is not None else found if found is not None else config.train.seeds[0]
        jobs = [(name, label, nfe, Path(samples))]
    else:
        targets = students(config, None, arm, seed)
        nfes = [nfe] if nfe else list(config.sample.nfe)
        jobs = [(a, s, k, paths.samples(a, s, k)) for a, s, _ in targets for k in nfes]
    if out and len(jobs) > 1:
        raise ConfigError("--out needs a single --arm, --train-seed and --nfe (or --samples)")
    check_writable(Path(out).parent if out else paths.root / "fid", "FID results")
    device = resolve_device(config.device)
    fnet = feature_net_spec(ev.feature_net, paths.features, ev.inception_weights)
    if fnet.note:
        log(f"note: {fnet.note}")
    results = []
    for arm_name, train_seed, k, path in jobs:
        if skip_missing and not Path(path).exists():
            log(f"skipping {arm_name} seed {train_seed} NFE {k}: {path} does not exist")
            continue
        results.append(_fid_of(config, fnet, arm_name, train_seed, k, path, out, device, progress, log))
    if not results:
        raise FIDError("no sample set was evaluated")
    return results


def _fid_of(config: Config, fnet: Any, arm: str, train_seed: int, nfe: int | None, path: Path,
            out: str | Path | None, device: torch.device, progress: bool, log: Log) -> dict[str, Any]:
    """The FID json of one sample set, under its MLflow run."""
    from rfpp.checkpoints import file_sha256
    from rfpp.eval.fid import check_sample_shape, evaluate_images, profile_image_shape, write_result

    ev, paths = config.eval, ProfilePaths.of(config.profile)
    with stage_run(_seeded(config, train_seed), "fid", arm, seed=train_seed,
                   run_name=f"fid-{arm}-seed{train_seed}" + (f"-nfe{nfe}" if nfe else "")) as run:
        sha = file_sha256(path) if Path(path).is_file() else None  # before reading: a later remake shows
        images, _, meta = read_samples(path)
        check_sample_shape(images, profile_image_shape(config), str(path), config.profile)
        result = evaluate_images(images, fnet, ev.reference, paths.root / "fid", config.data.dataset,
                                 config.data.resolution, num_samples=ev.num_samples, isc=ev.isc, kid=ev.kid,
                                 prc=ev.prc, kid_subset_size=ev.kid_subset_size, batch=ev.batch, device=device,
                                 reference_sha256=ev.reference_sha256, progress=progress)
        result.update(arm=arm, train_seed=train_seed, profile=config.profile,
                      straightness=meta.get("straightness"),
                      samples={"path": str(path), "num_available": int(images.shape[0]), "sha256": sha,
                               "fingerprint": (meta.get("fingerprint") or {}).get("id")},
                      sampling={key: meta.get(key) for key in (
                          "nfe", "solver", "update", "schedule", "t_start", "seed", "ema", "checkpoint",
                          "checkpoint_sha256", "checkpoint_step", "class_labels", "noise")})
        if result["sampling"].get("nfe") is None:
            result["sampling"]["nfe"] = nfe
        target = Path(out) if out else paths.fid(arm, train_seed, result["sampling"]["nfe"])
        write_result(target, result)
        run.log_metrics({f"fid_{key}" if key != "fid" else "fid": v for key, v in result["metrics"].items()},
                        int(result["sampling"]["nfe"] or 0))
        run.log_artifact(target)
        if result["sampling"]["nfe"]:  # the arm run's FID per NFE: the json's value
            run.log_params({"nfe": result["sampling"]["nfe"]})
            run.log_summary({f"{key}_nfe{result['sampling']['nfe']}": v for key, v in result["metrics"].items()})
    extra = ", ".join(f"{key} {v:.4g}" for key, v in result["metrics"].items() if key != "fid")
    log(f"{arm} seed {train_seed} NFE {result['sampling']['nfe']}: FID {result['value']:.4f} ({fnet.name} features, "
        f"{result['protocol']['num_samples']} samples{', ' + extra if extra else ''}) -> {target}")
    return result


# ----------------------------------------------------------------------------------------------------- report


def run_report(config: Config, out: str | Path | None = None, log: Log = print) -> dict[str, Any]:
    """The profile's markdown report with its plots (rfpp.report.write_report), logged to MLflow; its summary
    (path and rows) goes to `log` as one JSON line. A FID whose samples were remade since is a ReportError naming
    the command that redoes it (the report, written first, marks it too)."""
    from rfpp.report import ReportError, write_report

    paths = ProfilePaths.of(config.profile)
    target = Path(out) if out else paths.report
    check_writable(target.parent, "the report")
    with stage_run(config, "report") as run:
        written = write_report(config, paths, target)
        run.log_artifact(written["report"])
        if run.run_id:  # report.html: what MLflow's artifact viewer shows with its plots and grids
            from rfpp.report import html_page

            run.log_text(html_page(written["report"]), "report.html")
        for png in written.get("plots", []):
            run.log_image_file(png, artifact_path="report")
        log(json.dumps({"report": str(written["report"]), "rows": written["rows"]}))
        if written["stale"]:
            raise ReportError("; ".join(written["stale"]))
    return written
