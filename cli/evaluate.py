"""`rfpp sample`, `rfpp invert`, `rfpp translate`, `rfpp fid`, `rfpp report`: what a user touches after training.

Argument parsing only; the work is in rfpp.eval (sampling, sample files, FID) and rfpp.report.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from cli.common import EXIT_USAGE, DryRunOpt, OverridesArg, ProfileOpt, fail, resolve

CheckpointOpt = typer.Option(None, "--checkpoint", "-c",
                             help="An rfpp model file to use (default: the arm's final EMA student, "
                                  "results/<profile>/train/<arm>/final.pt).")
ArmOpt = typer.Option(None, "--arm", help="Training arm (a key of train.arms); names outputs and picks the student.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: the profile's device; auto = cuda "
                                                "when available).")
SolverOpt = typer.Option(None, "--solver", help="euler or heun (default sample.solver).")
UpdateOpt = typer.Option(None, "--update", help="default (plain ODE step) or new (the paper's; default sample.update).")


@contextlib.contextmanager
def tracked(config: Any, stage: str, arm: str | None = None) -> Iterator[Any]:
    """rfpp.tracking's MLflow run when it is available (RFPP_TRACKING=off disables it), else a no-op."""
    try:
        from rfpp.tracking import start_run
    except ImportError:
        yield None
        return
    with start_run(config, stage=stage, arm=arm) as run:
        with contextlib.suppress(Exception):
            run.log_config(config)
        yield run


def _log(run: Any, method: str, *args: Any, **kwargs: Any) -> None:
    if run is not None:
        with contextlib.suppress(Exception):
            getattr(run, method)(*args, **kwargs)


def _errors() -> tuple[type[BaseException], ...]:
    """What a command reports as one line and exit 1 (anything else rfpp raises: cli/main.py's handler)."""
    from rfpp.checkpoints import CheckpointError
    from rfpp.eval.generate import SamplesError
    from rfpp.provenance import LockedError, ProvenanceError
    from rfpp.report import ReportError

    errors: list[type[BaseException]] = [CheckpointError, SamplesError, LockedError, ProvenanceError, ReportError,
                                         ValueError, FileNotFoundError, OSError]
    try:
        from rfpp.eval.fid import FIDError, ProtocolMismatchError

        errors += [FIDError, ProtocolMismatchError]
    except ImportError:
        pass
    return tuple(errors)


def _check_writable(directory: Path, what: str) -> None:
    """Fail (exit 1) before any work when `directory` cannot be made or written into, naming it.

    (As root, os.access says yes to any existing directory; a path through a regular file is still found.)
    """
    blocker = next((p for p in [*reversed(directory.parents), directory] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        fail(f"cannot write {what} into {directory}: {blocker} is a file, not a directory; move it away or pass --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot write {what} into {directory}: {err.strerror or err}; make it a writable directory or pass --out")
    if not os.access(directory, os.W_OK | os.X_OK):
        fail(f"cannot write {what} into {directory}: it is not writable; fix its permissions or pass --out")


def _check_grid(nfes: list[int | None], solver: str, t_start: float) -> None:
    """Fail before any work when the default grid of an NFE cannot start at `t_start` (exit 2, naming the option
    to change); None in `nfes` (a user --schedule) only needs t_start in (0, 1)."""
    from rfpp.sampling.grids import check_t_start, steps_for_nfe

    for k in nfes:
        try:
            steps = steps_for_nfe(k, solver) if k is not None else 1
        except ValueError as err:  # e.g. Heun with an even NFE: exit 1, as the sampler has always reported it
            fail(str(err))
        try:
            check_t_start(t_start, steps)
        except ValueError as err:
            fix = (f"raise --t-start (sample.t_start) above {(steps - 1) / steps:g} or lower --nfe"
                   if 0 < t_start < 1 else "give --t-start (sample.t_start) in (0, 1)")
            fail(f"{err}; {fix}", EXIT_USAGE)


def _arms_and_checkpoints(config: Any, checkpoint: str | None, arm: str | None) -> list[tuple[str, Path]]:
    """(arm name, model file) pairs: the given checkpoint, the given arm's student, or every arm's student."""
    from rfpp.paths import ProfilePaths

    paths = ProfilePaths.of(config.profile)
    if checkpoint:
        cp = Path(checkpoint)
        if arm is None:
            arm = cp.parent.name if cp.parent.parent.name == "train" else cp.stem
        return [(arm, cp)]
    if arm is not None:
        if arm not in config.train.arms:
            fail(f"unknown arm {arm!r}; this profile's arms: {', '.join(config.train.arms)}", EXIT_USAGE)
        return [(arm, paths.student(arm))]
    return [(name, paths.student(name)) for name in config.train.arms]


def register(app: typer.Typer) -> None:  # noqa: C901 - one closure per command
    @app.command()
    def sample(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               nfe: int = typer.Option(None, "--nfe", min=1,
                                       help="Network evaluations per sample (default: every NFE of sample.nfe)."),
               checkpoint: str = CheckpointOpt, arm: str = ArmOpt, solver: str = SolverOpt, update: str = UpdateOpt,
               schedule: str = typer.Option(None, "--schedule",
                                            help="A user time grid instead of the default one, descending in "
                                                 "(0, 1], e.g. '0.99999,0.6,0.2' (0 is appended)."),
               t_start: float = typer.Option(None, "--t-start", help="First point of the default grid, in (0, 1) "
                                                                      "(default sample.t_start, 1 − 1e−5)."),
               num_samples: int = typer.Option(None, "--num-samples", min=1, help="Samples (default "
                                                                                 "sample.num_samples)."),
               seed: int = typer.Option(None, "--seed", min=0, help="Noise seed: sample i's noise is "
                                                                    "make_noise(seed, [i]) (default sample.seed)."),
               class_labels: str = typer.Option(None, "--class-labels",
                                                help="Class labels, e.g. '1,2,3' (cycled over the samples); default "
                                                     "uniform per sample for a class-conditional network."),
               batch: int = typer.Option(None, "--batch", min=1, help="Batch size (default sample.batch)."),
               device: str = DeviceOpt,
               fmt: str = typer.Option(None, "--format", help="npz (uint8 images + labels), png (a folder of PNGs) or "
                                                               "zip (EDM dataset zip); default sample.format."),
               out: str = typer.Option(None, "--out", "-o", help="Output path (default "
                                                                 "results/<profile>/samples/<arm>/nfe<k>.npz)."),
               shard: int = typer.Option(0, "--shard", min=0, help="This worker's shard (0-based)."),
               num_shards: int = typer.Option(1, "--num-shards", min=1,
                                              help="Split the samples into this many shards (one per GPU); "
                                                   "then run once more with --merge."),
               merge: bool = typer.Option(False, "--merge", help="Join the shards of --num-shards into one set."),
               ) -> None:
        """Few-step sampling from a trained student: a PNG grid plus the samples (.npz, PNG folder or zip).

        Sample i is reproducible from (seed, i) whatever the batching or sharding. Straightness of the
        trajectories of the first sample.straightness_samples samples is recorded with the samples.
        """
        config = resolve(profile, overrides, dry_run)
        from rfpp.eval.generate import (
            SamplingSpec,
            generate,
            load_student,
            lock_path,
            merge_shards,
            parse_numbers,
            resolve_device,
            sample_meta,
            shard_indices,
            shard_path,
            stem_of,
            write_samples,
        )
        from rfpp.paths import ProfilePaths
        from rfpp.provenance import output_lock

        sc = config.sample
        fmt_ = fmt or sc.format
        if fmt_ not in ("npz", "png", "zip"):
            fail(f"--format must be npz, png or zip, not {fmt_!r}", EXIT_USAGE)
        if shard >= num_shards:
            fail(f"--shard {shard} must be smaller than --num-shards {num_shards}", EXIT_USAGE)
        try:
            grid_times = parse_numbers(schedule, float, "--schedule") or sc.schedule
            labels = parse_numbers(class_labels, int, "--class-labels")
            dev = resolve_device(device or config.device)
        except ValueError as err:
            fail(str(err), EXIT_USAGE)
        nfes = [nfe] if nfe is not None else ([None] if grid_times else list(sc.nfe))
        if grid_times and nfe is not None:
            fail("give either --nfe or --schedule, not both", EXIT_USAGE)
        if not merge:
            _check_grid(nfes, solver or sc.solver, sc.t_start if t_start is None else t_start)
        targets = _arms_and_checkpoints(config, checkpoint, arm)
        if out and (len(targets) > 1 or len(nfes) > 1):
            fail("--out needs a single arm (or --checkpoint) and a single --nfe", EXIT_USAGE)
        paths = ProfilePaths.of(config.profile)
        for arm_name, cp in targets:
            for k in nfes:
                spec = SamplingSpec(nfe=k, solver=solver or sc.solver, update=update or sc.update,
                                    schedule=grid_times, t_start=sc.t_start if t_start is None else t_start,
                                    seed=sc.seed if seed is None else seed,
                                    num_samples=num_samples or sc.num_samples, batch=batch or sc.batch,
                                    class_labels=labels, straightness_samples=sc.straightness_samples)
                n_eval = k if k is not None else 2 * len(grid_times) - 1 if spec.solver == "heun" else len(grid_times)
                target = Path(out) if out else paths.samples(arm_name, n_eval)
                part = shard_path(target, shard, num_shards) if num_shards > 1 and not merge else target
                _check_writable(stem_of(part).parent, "samples")
                try:
                    with output_lock(lock_path(part), f"sample set {stem_of(part)}"):
                        if merge:
                            written = merge_shards(target, num_shards, fmt=fmt_, grid=sc.grid,
                                                   grid_scale=sc.grid_scale)
                            typer.echo(f"merged {num_shards} shards into {written['samples']}")
                            continue
                        with tracked(config, "sample", arm_name) as run:
                            velocity, info = load_student(cp, config)
                            idx = shard_indices(spec.num_samples, shard, num_shards)
                            images, labs, s = generate(velocity, spec, idx, dev, progress=True)
                            meta = sample_meta(spec, info, cp, s, shard, num_shards, dev)
                            meta.update(arm=arm_name, profile=config.profile)
                            if num_shards > 1:
                                written = write_samples(part, images, labs, list(idx), meta, "npz", write_grid=False)
                            else:
                                written = write_samples(target, images, labs, list(idx), meta, fmt_, grid=sc.grid,
                                                        grid_scale=sc.grid_scale)
                            _log(run, "log_metrics", {f"straightness_nfe{n_eval}": s} if s is not None else {})
                            if "grid" in written:
                                _log(run, "log_image_file", str(written["grid"]), artifact_path=f"samples/{arm_name}")
                except _errors() as err:
                    fail(str(err))
                straight = f", straightness {s:.4g}" if not merge and s is not None else ""
                typer.echo(f"{arm_name}: {len(idx)} samples at NFE {n_eval} ({spec.solver}, {spec.update}){straight} "
                           f"-> {written['samples']}" + (f" (grid {written['grid']})" if "grid" in written else ""))

    def _inversion(config: Any, checkpoint: str | None, arm: str | None, images: str | None, indices: str | None,
                   num_images: int, nfe: int, decode_nfe: int | None, solver: str | None, update: str | None,
                   source_class: str | None, target_class: int | None, out: str | None, device: str | None,
                   what: str) -> None:
        import torch

        from rfpp.eval.generate import (
            before_after_grid,
            invert_and_decode,
            load_images,
            load_student,
            parse_numbers,
            resolve_device,
        )
        from rfpp.images import atomic_write
        from rfpp.paths import ProfilePaths

        targets = _arms_and_checkpoints(config, checkpoint, arm)
        arm_name, cp = targets[0]
        try:
            dev = resolve_device(device or config.device)
            idx = parse_numbers(indices, int, "--indices") or list(range(num_images))
            velocity, info = load_student(cp, config)
            x, labels = load_images(images or config.data.dataset, config.data.resolution, idx)
            if velocity.label_dim:
                given = parse_numbers(source_class, int, "--source-class")
                src = torch.tensor([given[i % len(given)] for i in range(len(idx))]) if given else labels
                if (src < 0).any():
                    raise ValueError("the network is class-conditional but the images carry no labels; "
                                     "give --source-class")
                dst = src if target_class is None else torch.full_like(src, target_class)
                if target_class is not None and not 0 <= target_class < velocity.label_dim:
                    raise ValueError(f"--target-class {target_class} is outside [0, {velocity.label_dim})")
            else:
                if target_class is not None:
                    raise ValueError(f"{cp} is an unconditional network (label_dim 0): translation to another class "
                                     "needs a class-conditional model; use `rfpp invert` for reconstruction")
                src = dst = None
            noise, decoded = invert_and_decode(velocity, x, src, dst, nfe, decode_nfe or nfe,
                                               solver or config.sample.solver, update or config.sample.update, dev,
                                               t_start=config.sample.t_start)
            base = Path(out) if out else ProfilePaths.of(config.profile).root / what / f"{arm_name}-inv{nfe}-dec" \
                f"{decode_nfe or nfe}{'' if target_class is None else f'-to{target_class}'}.png"
            grid = before_after_grid(x, [decoded], base.with_suffix(".png"),
                                     scale=config.sample.grid_scale)
            import numpy as np

            from rfpp.images import to_uint8

            def dump(handle: Any) -> None:
                np.savez(handle, noise=noise.numpy(), images=to_uint8(x).numpy(), decoded=to_uint8(decoded).numpy(),
                         source_labels=(src if src is not None else torch.full((len(idx),), -1)).numpy(),
                         target_labels=(dst if dst is not None else torch.full((len(idx),), -1)).numpy(),
                         indices=np.asarray(idx), t_start=np.float64(config.sample.t_start))

            arrays = atomic_write(base.with_suffix(".npz"), dump)
        except _errors() as err:
            fail(str(err))
        err_ = float((decoded - x).abs().mean())
        typer.echo(f"{what}: {len(idx)} images inverted in {nfe} and decoded in {decode_nfe or nfe} steps "
                   f"(mean |x - x'| {err_:.4f}); before/after grid {grid}, arrays {arrays}")

    @app.command()
    def invert(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               checkpoint: str = CheckpointOpt, arm: str = ArmOpt,
               images: str = typer.Option(None, "--images", help="Dataset spec, folder, EDM zip or sample .npz "
                                                                 "(default data.dataset)."),
               indices: str = typer.Option(None, "--indices", help="Which images, e.g. '0,5,9'."),
               num_images: int = typer.Option(8, "--num-images", min=1, help="The first N images (without "
                                                                             "--indices)."),
               nfe: int = typer.Option(4, "--nfe", min=1, help="Inversion steps (image -> noise)."),
               decode_nfe: int = typer.Option(None, "--decode-nfe", min=1, help="Decoding steps (default --nfe)."),
               solver: str = SolverOpt, update: str = UpdateOpt,
               source_class: str = typer.Option(None, "--source-class", help="Class of the images (conditional "
                                                                             "networks; default their labels)."),
               out: str = typer.Option(None, "--out", "-o", help="Grid PNG path (the arrays go beside it as .npz)."),
               device: str = DeviceOpt) -> None:
        """Invert images to noise in N steps and decode them back in M steps; before/after grid."""
        config = resolve(profile, overrides, dry_run)
        _inversion(config, checkpoint, arm, images, indices, num_images, nfe, decode_nfe, solver, update,
                   source_class, None, out, device, "invert")

    @app.command()
    def translate(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
                  target_class: int = typer.Option(..., "--target-class", help="Class to decode with (e.g. the "
                                                                               "paper's lion -> tiger)."),
                  checkpoint: str = CheckpointOpt, arm: str = ArmOpt,
                  images: str = typer.Option(None, "--images", help="Dataset spec, folder, EDM zip or sample .npz."),
                  indices: str = typer.Option(None, "--indices", help="Which images, e.g. '0,5,9'."),
                  num_images: int = typer.Option(8, "--num-images", min=1, help="The first N images."),
                  nfe: int = typer.Option(4, "--nfe", min=1, help="Inversion steps."),
                  decode_nfe: int = typer.Option(None, "--decode-nfe", min=1, help="Decoding steps (default --nfe)."),
                  solver: str = SolverOpt, update: str = UpdateOpt,
                  source_class: str = typer.Option(None, "--source-class", help="Class of the images."),
                  out: str = typer.Option(None, "--out", "-o", help="Grid PNG path."),
                  device: str = DeviceOpt) -> None:
        """Image-to-image translation: invert with the source class, decode with --target-class (conditional)."""
        config = resolve(profile, overrides, dry_run)
        _inversion(config, checkpoint, arm, images, indices, num_images, nfe, decode_nfe, solver, update,
                   source_class, target_class, out, device, "translate")

    @app.command()
    def fid(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
            arm: str = ArmOpt,
            nfe: int = typer.Option(None, "--nfe", min=1, help="NFE of the samples (default: every NFE of "
                                                               "sample.nfe)."),
            samples: str = typer.Option(None, "--samples", help="A sample set (.npz, PNG folder, EDM zip) instead of "
                                                                "results/<profile>/samples/<arm>/nfe<k>.npz."),
            out: str = typer.Option(None, "--out", "-o", help="Result json (default "
                                                              "results/<profile>/fid/<arm>-nfe<k>.json)."),
            isc: bool = typer.Option(None, "--isc/--no-isc", help="Also the Inception Score (default eval.isc)."),
            kid: bool = typer.Option(None, "--kid/--no-kid", help="Also KID (needs reference='dataset')."),
            prc: bool = typer.Option(None, "--prc/--no-prc", help="Also precision/recall (needs "
                                                                  "reference='dataset')."),
            inception_weights: str = typer.Option(None, "--inception-weights",
                                                  help="Local path or URL of torch-fidelity's Inception weights "
                                                       "(default: the torch hub cache)."),
            device: str = DeviceOpt,
            skip_missing: bool = typer.Option(False, "--skip-missing", help="In a sweep, skip sample sets that do "
                                                                            "not exist instead of failing.")) -> None:
        """FID of sample sets against reference statistics; one json per evaluation with its full protocol.

        Feature network eval.feature_net (inception, or digits-classifier whose features stand in for
        Inception); reference eval.reference ('dataset', a URL or an .npz with mu/sigma).
        """
        config = resolve(profile, overrides, dry_run)
        from rfpp.checkpoints import file_sha256
        from rfpp.eval.fid import (
            check_sample_shape,
            evaluate_images,
            feature_net_spec,
            profile_image_shape,
            write_result,
        )
        from rfpp.eval.generate import read_samples, resolve_device
        from rfpp.paths import ProfilePaths

        ev = config.eval
        paths = ProfilePaths.of(config.profile)
        if samples:
            jobs = [(arm or Path(samples).parent.name, nfe, Path(samples))]
        else:
            arms = [arm] if arm else list(config.train.arms)
            if arm and arm not in config.train.arms:
                fail(f"unknown arm {arm!r}; this profile's arms: {', '.join(config.train.arms)}", EXIT_USAGE)
            nfes = [nfe] if nfe else list(config.sample.nfe)
            jobs = [(a, k, paths.samples(a, k)) for a in arms for k in nfes]
        if out and len(jobs) > 1:
            fail("--out needs a single --arm and --nfe (or --samples)", EXIT_USAGE)
        _check_writable(Path(out).parent if out else paths.root / "fid", "FID results")
        try:
            dev = resolve_device(device or config.device)
            fnet = feature_net_spec(ev.feature_net, paths.features, inception_weights or ev.inception_weights)
        except _errors() as err:
            fail(str(err))
        if fnet.note:
            typer.echo(f"note: {fnet.note}")
        done = 0
        for arm_name, k, path in jobs:
            if skip_missing and not Path(path).exists():
                typer.echo(f"skipping {arm_name} NFE {k}: {path} does not exist")
                continue
            try:
                with tracked(config, "fid", arm_name) as run:
                    sha = file_sha256(path) if Path(path).is_file() else None  # before reading: a later remake shows
                    images, _, meta = read_samples(path)
                    check_sample_shape(images, profile_image_shape(config), str(path), config.profile)
                    result = evaluate_images(images, fnet, ev.reference, paths.root / "fid", config.data.dataset,
                                             config.data.resolution, num_samples=ev.num_samples,
                                             isc=ev.isc if isc is None else isc, kid=ev.kid if kid is None else kid,
                                             prc=ev.prc if prc is None else prc, kid_subset_size=ev.kid_subset_size,
                                             batch=ev.batch, device=dev, reference_sha256=ev.reference_sha256,
                                             progress=True)
                    k_eff = k if k is not None else meta.get("nfe")
                    result.update(arm=arm_name, profile=config.profile, straightness=meta.get("straightness"),
                                  samples={"path": str(path), "num_available": int(images.shape[0]),
                                           "sha256": sha, "fingerprint": (meta.get("fingerprint") or {}).get("id")},
                                  sampling={key: meta.get(key) for key in (
                                      "nfe", "solver", "update", "schedule", "t_start", "seed", "ema", "checkpoint",
                                      "checkpoint_sha256", "checkpoint_step", "class_labels", "noise")})
                    if result["sampling"].get("nfe") is None:
                        result["sampling"]["nfe"] = k_eff
                    target = Path(out) if out else paths.fid(arm_name, result["sampling"]["nfe"])
                    write_result(target, result)
                    step = int(result["sampling"]["nfe"] or 0)
                    _log(run, "log_metrics", {f"fid_{key}" if key != "fid" else "fid": float(v)
                                              for key, v in result["metrics"].items()}, step)
                    _log(run, "log_artifact", str(target))
            except _errors() as err:
                fail(str(err))
            done += 1
            extra = ", ".join(f"{key} {v:.4g}" for key, v in result["metrics"].items() if key != "fid")
            typer.echo(f"{arm_name} NFE {result['sampling']['nfe']}: FID {result['value']:.4f} "
                       f"({fnet.name} features, {result['protocol']['num_samples']} samples"
                       f"{', ' + extra if extra else ''}) -> {target}")
        if not done:
            fail("no sample set was evaluated")

    @app.command()
    def report(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               out: str = typer.Option(None, "--out", "-o", help="Report path (default "
                                                                 "results/<profile>/report.md).")) -> None:
        """Write the markdown report of every arm and NFE, with its plots (PNG), and log it to MLflow."""
        config = resolve(profile, overrides, dry_run, gpus=0)
        from rfpp.paths import ProfilePaths
        from rfpp.report import write_report

        paths = ProfilePaths.of(config.profile)
        target = Path(out) if out else paths.report
        _check_writable(target.parent, "the report")
        try:
            with tracked(config, "report") as run:
                written = write_report(config, paths, target)
                _log(run, "log_artifact", str(written["report"]))
                for png in written.get("plots", []):
                    _log(run, "log_image_file", str(png), artifact_path="report")
                typer.echo(json.dumps({"report": str(written["report"]), "rows": written["rows"]}))
                if written["stale"]:  # the report (written) marks them too
                    fail("; ".join(written["stale"]))
        except _errors() as err:
            fail(str(err))
