"""`rfpp sample`, `rfpp invert`, `rfpp translate`, `rfpp fid`, `rfpp report`: what a user touches after training.

Argument parsing only: each command resolves the configuration (its options that stand for a profile key are
overrides of that key, checked by rfpp.config) and calls its stage in rfpp.eval.stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.common import EXIT_USAGE, DryRunOpt, OverridesArg, ProfileOpt, fail, reported, resolve

CheckpointOpt = typer.Option(None, "--checkpoint", "-c",
                             help="An rfpp model file to use (default: the arm's final EMA student, "
                                  "results/<profile>/train/<arm>/seed<k>/final.pt), or a checkpoint of the paper's "
                                  "code (with --net-config) or an EDM .pkl.")
NetConfigOpt = typer.Option(None, "--net-config",
                            help="The paper's network JSON (configs_unet/*.json) for a --checkpoint of its format "
                                 "(a released .pth); the file is imported once into results/<profile>/imported/.")
ArmOpt = typer.Option(None, "--arm", help="Training arm (a key of train.arms); names outputs and picks the student.")
TrainSeedOpt = typer.Option(None, "--train-seed", min=0, help="Training seed (one of train.seeds) whose student to "
                                                              "use; default: every seed.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (auto = cuda when available). Sets device.")
SolverOpt = typer.Option(None, "--solver", help="euler or heun. Sets sample.solver.")
UpdateOpt = typer.Option(None, "--update", help="default (plain ODE step) or new (the paper's). Sets sample.update.")


def _errors() -> tuple[type[BaseException], ...]:
    """What a command reports as one line and exit 1 (anything else rfpp raises: cli/main.py's handler)."""
    from rfpp.checkpoints import CheckpointError
    from rfpp.eval.errors import FIDError, ProtocolMismatchError
    from rfpp.eval.generate import SamplesError
    from rfpp.provenance import LockedError, ProvenanceError
    from rfpp.report import ReportError

    return (CheckpointError, SamplesError, LockedError, ProvenanceError, ReportError, FIDError, ProtocolMismatchError,
            ValueError, FileNotFoundError, OSError)


def _numbers(text: str | None, kind: type, option: str) -> list | None:
    """A comma-separated option ('0.99,0.6,0.2') as a list (None when not given); a malformed one exits 2."""
    if text is None or not str(text).strip():
        return None
    try:
        return [kind(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        fail(f"{option}: expected comma-separated {kind.__name__}s, got {text!r}", EXIT_USAGE)
    return None


def _model_file(config: Any, checkpoint: str | None, net_config: str | None) -> str | None:
    """The checkpoint as an rfpp model file: itself, or a foreign one imported once (rfpp.interop.as_model_file);
    a configuration JSON of another architecture exits 2, an unusable file 1."""
    if checkpoint is None:
        if net_config is not None:
            fail("--net-config goes with --checkpoint (a checkpoint of the paper's code)", EXIT_USAGE)
        return None
    from rfpp.interop import NetConfigError, as_model_file
    from rfpp.paths import ProfilePaths

    try:
        return str(as_model_file(checkpoint, net_config, ProfilePaths.of(config.profile).root / "imported"))
    except NetConfigError as err:
        fail(str(err), EXIT_USAGE)
    except _errors() as err:
        fail(str(err))
    return None


def register(app: typer.Typer) -> None:  # noqa: C901 - one closure per command
    @app.command()
    def sample(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               nfe: int = typer.Option(None, "--nfe", help="Network evaluations per sample (default: every NFE of "
                                                           "sample.nfe). Sets sample.nfe=[K]."),
               checkpoint: str = CheckpointOpt, net_config: str = NetConfigOpt, arm: str = ArmOpt,
               train_seed: int = TrainSeedOpt, solver: str = SolverOpt, update: str = UpdateOpt,
               schedule: str = typer.Option(None, "--schedule",
                                            help="A user time grid instead of the default one, descending in "
                                                 "(0, 1], e.g. '0.99999,0.6,0.2' (0 is appended). Sets "
                                                 "sample.schedule."),
               t_start: float = typer.Option(None, "--t-start", help="First point of the default grid, in (0, 1). "
                                                                      "Sets sample.t_start."),
               num_samples: int = typer.Option(None, "--num-samples", help="Samples. Sets sample.num_samples."),
               seed: int = typer.Option(None, "--seed", help="Noise seed: sample i's noise is drawn from (seed, i). "
                                                             "Sets sample.seed."),
               class_labels: str = typer.Option(None, "--class-labels",
                                                help="Class labels, e.g. '1,2,3' (cycled over the samples); default "
                                                     "uniform per sample for a class-conditional network."),
               batch: int = typer.Option(None, "--batch", help="Batch size. Sets sample.batch."),
               device: str = DeviceOpt,
               fmt: str = typer.Option(None, "--format", help="npz (uint8 images + labels), png (a folder of PNGs) or "
                                                               "zip (EDM dataset zip). Sets sample.format."),
               out: str = typer.Option(None, "--out", "-o", help="Output path (default "
                                                                 "results/<profile>/samples/<arm>/seed<k>/nfe<n>"
                                                                 ".npz)."),
               shard: int = typer.Option(0, "--shard", min=0, help="This worker's shard (0-based)."),
               num_shards: int = typer.Option(1, "--num-shards", min=1,
                                              help="Split the samples into this many shards (one per GPU); "
                                                   "then run once more with --merge."),
               merge: bool = typer.Option(False, "--merge", help="Join the shards of --num-shards into one set."),
               ) -> None:
        """Few-step sampling from a trained student: a PNG grid plus the samples (.npz, PNG folder or zip).

        Sample i is reproducible from (seed, i) whatever the batching or sharding. Straightness of the
        trajectories of the first sample.straightness_samples samples is recorded with the samples.
        An option that says "Sets <key>" is the override <key>=value, checked with the profile.
        """
        config = resolve(profile, overrides, dry_run, shorthands={
            "sample.nfe": ("--nfe", None if nfe is None else [nfe]), "sample.solver": ("--solver", solver),
            "sample.update": ("--update", update),
            "sample.schedule": ("--schedule", _numbers(schedule, float, "--schedule")),
            "sample.t_start": ("--t-start", t_start), "sample.num_samples": ("--num-samples", num_samples),
            "sample.seed": ("--seed", seed), "sample.batch": ("--batch", batch), "sample.format": ("--format", fmt),
            "device": ("--device", device)})
        if shard >= num_shards:
            fail(f"--shard {shard} must be smaller than --num-shards {num_shards}", EXIT_USAGE)
        if nfe is not None and config.sample.schedule:
            fail("give either --nfe or --schedule (sample.schedule), not both", EXIT_USAGE)
        from rfpp.eval.stage import run_sample

        checkpoint = _model_file(config, checkpoint, net_config)
        with reported(*_errors()):
            run_sample(config, arm=arm, seed=train_seed, checkpoint=checkpoint, out=out,
                       class_labels=_numbers(class_labels, int, "--class-labels"), shard=shard,
                       num_shards=num_shards, merge=merge, log=typer.echo)

    def inversion(profile: str, overrides: list[str], dry_run: bool, nfe: int, decode_nfe: int | None,
                  solver: str | None, update: str | None, device: str | None, indices: str | None,
                  source_class: str | None, net_config: str | None, **options: Any) -> None:
        """`rfpp invert` and `rfpp translate`: the decoding is sampling at --decode-nfe (sample.nfe), with
        sample.solver, sample.update and sample.t_start."""
        config = resolve(profile, overrides, dry_run, shorthands={
            "sample.nfe": ("--decode-nfe", [decode_nfe or nfe]), "sample.solver": ("--solver", solver),
            "sample.update": ("--update", update), "device": ("--device", device)})
        from rfpp.eval.stage import run_inversion

        options["checkpoint"] = _model_file(config, options.get("checkpoint"), net_config)
        with reported(*_errors()):
            run_inversion(config, nfe=nfe, decode_nfe=decode_nfe, indices=_numbers(indices, int, "--indices"),
                          source_classes=_numbers(source_class, int, "--source-class"), log=typer.echo,
                          **options)

    @app.command()
    def invert(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               checkpoint: str = CheckpointOpt, net_config: str = NetConfigOpt, arm: str = ArmOpt,
               images: str = typer.Option(None, "--images", help="Dataset spec, folder, EDM zip or sample .npz "
                                                                 "(default data.dataset)."),
               indices: str = typer.Option(None, "--indices", help="Which images, e.g. '0,5,9'."),
               num_images: int = typer.Option(8, "--num-images", min=1, help="The first N images (without "
                                                                             "--indices)."),
               nfe: int = typer.Option(4, "--nfe", min=1, help="Inversion steps (image -> noise)."),
               decode_nfe: int = typer.Option(None, "--decode-nfe", help="Decoding steps (default --nfe). Sets "
                                                                         "sample.nfe=[M]."),
               solver: str = SolverOpt, update: str = UpdateOpt,
               source_class: str = typer.Option(None, "--source-class", help="Class of the images (conditional "
                                                                             "networks; default their labels)."),
               out: str = typer.Option(None, "--out", "-o", help="Grid PNG path (the arrays go beside it as .npz)."),
               device: str = DeviceOpt) -> None:
        """Invert images to noise in N steps and decode them back in M steps; before/after grid."""
        inversion(profile, overrides, dry_run, nfe, decode_nfe, solver, update, device, indices, source_class,
                  net_config, checkpoint=checkpoint, arm=arm, images=images, num_images=num_images, out=out)

    @app.command()
    def translate(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
                  target_class: int = typer.Option(..., "--target-class", help="Class to decode with (e.g. the "
                                                                               "paper's lion -> tiger)."),
                  checkpoint: str = CheckpointOpt, net_config: str = NetConfigOpt, arm: str = ArmOpt,
                  images: str = typer.Option(None, "--images", help="Dataset spec, folder, EDM zip or sample .npz."),
                  indices: str = typer.Option(None, "--indices", help="Which images, e.g. '0,5,9'."),
                  num_images: int = typer.Option(8, "--num-images", min=1, help="The first N images."),
                  nfe: int = typer.Option(4, "--nfe", min=1, help="Inversion steps."),
                  decode_nfe: int = typer.Option(None, "--decode-nfe", help="Decoding steps (default --nfe). Sets "
                                                                            "sample.nfe=[M]."),
                  solver: str = SolverOpt, update: str = UpdateOpt,
                  source_class: str = typer.Option(None, "--source-class", help="Class of the images."),
                  out: str = typer.Option(None, "--out", "-o", help="Grid PNG path."),
                  device: str = DeviceOpt) -> None:
        """Image-to-image translation: invert with the source class, decode with --target-class (conditional)."""
        inversion(profile, overrides, dry_run, nfe, decode_nfe, solver, update, device, indices, source_class,
                  net_config, target_class=target_class, checkpoint=checkpoint, arm=arm, images=images,
                  num_images=num_images, out=out)

    @app.command()
    def fid(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
            arm: str = ArmOpt, train_seed: int = TrainSeedOpt,
            nfe: int = typer.Option(None, "--nfe", min=1, help="NFE of the samples (default: every NFE of "
                                                               "sample.nfe)."),
            samples: str = typer.Option(None, "--samples", help="A sample set (.npz, PNG folder, EDM zip) instead of "
                                                                "results/<profile>/samples/<arm>/seed<k>/nfe<n>.npz."),
            out: str = typer.Option(None, "--out", "-o", help="Result json (default "
                                                              "results/<profile>/fid/<arm>-seed<k>-nfe<n>.json)."),
            isc: bool = typer.Option(None, "--isc/--no-isc", help="Also the Inception Score. Sets eval.isc."),
            kid: bool = typer.Option(None, "--kid/--no-kid", help="Also KID (needs reference='dataset'). Sets "
                                                                  "eval.kid."),
            prc: bool = typer.Option(None, "--prc/--no-prc", help="Also precision/recall (needs "
                                                                  "reference='dataset'). Sets eval.prc."),
            inception_weights: str = typer.Option(None, "--inception-weights",
                                                  help="Local path or URL of torch-fidelity's Inception weights "
                                                       "(default: the torch hub cache). Sets eval.inception_weights."),
            device: str = DeviceOpt,
            skip_missing: bool = typer.Option(False, "--skip-missing", help="In a sweep, skip sample sets that do "
                                                                            "not exist instead of failing.")) -> None:
        """FID of sample sets against reference statistics; one json per evaluation with its full protocol.

        Feature network eval.feature_net (inception, or digits-classifier whose features stand in for
        Inception); reference eval.reference ('dataset', a URL or an .npz with mu/sigma).
        """
        config = resolve(profile, overrides, dry_run, shorthands={
            "eval.isc": ("--isc", isc), "eval.kid": ("--kid", kid), "eval.prc": ("--prc", prc),
            "eval.inception_weights": ("--inception-weights", inception_weights), "device": ("--device", device)})
        from rfpp.eval.stage import run_fid

        with reported(*_errors()):
            run_fid(config, arm=arm, seed=train_seed, nfe=nfe, samples=samples, out=out, skip_missing=skip_missing,
                    log=typer.echo)

    @app.command()
    def report(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               out: str = typer.Option(None, "--out", "-o", help="Report path (default "
                                                                 "results/<profile>/report.md).")) -> None:
        """Write the markdown report of every arm and NFE, with its plots (PNG), and log it to MLflow."""
        config = resolve(profile, overrides, dry_run, gpus=0)
        from rfpp.eval.stage import run_report

        with reported(*_errors()):
            run_report(config, Path(out) if out else None, log=typer.echo)
