"""`rfpp features`: train the small digits classifier that serves as perceptual and FID feature network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, fail, resolve
from rfpp.config import Config


def register(app: typer.Typer) -> None:
    @app.command()
    def features(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
                 out: str = typer.Option(None, help="Output file (default results/<profile>/features/classifier.pt)."),
                 steps: int = typer.Option(600, min=1, help="Training steps (batch 64, one CPU thread: seconds)."),
                 seed: int = typer.Option(None, help="Training seed (default: the profile's seed)."),
                 min_accuracy: float = typer.Option(0.9, help="Fail when the held-out accuracy is below this."),
                 ) -> None:
        """Train the profile's feature network (the digits classifier) used by the perceptual loss and FID.

        A small CNN on the profile's dataset at eval.feature_resolution (default data.resolution; images
        are resized to it bilinearly, as LPIPS resizes to 224), with a stratified 20% held-out split whose
        accuracy is reported and stored in the file. Its features stand in for VGG16 (LPIPS) and Inception
        (FID) where those cannot be had; every output that uses it says so.

        The file records the stage's fingerprint (seed, data, eval.feature_resolution and the --steps/--seed
        used); an existing file that verifies and carries the same fingerprint is kept, any other is remade.
        """
        config = resolve(profile, overrides, dry_run)
        from rfpp.checkpoints import CheckpointError
        from rfpp.eval.digits_classifier import STAND_IN_NOTE, build_feature_net
        from rfpp.paths import ProfilePaths
        from rfpp.provenance import LockedError, output_lock
        from rfpp.tracking import TrackingError, start_run

        path = Path(out or ProfilePaths.of(config.profile).features)
        resolution = config.eval.feature_resolution or config.data.resolution
        seed = config.seed if seed is None else seed
        expected = features_fingerprint(config, steps, seed)
        try:
            with output_lock(path.parent / f".{path.name}.lock", f"the feature network {path}"), \
                    start_run(config, stage="features") as run:  # one MLflow run, like every stage
                run.log_config(config)
                record = kept_record(path, expected)
                if record is None:
                    record = build_feature_net(config.data.dataset, resolution, path, seed=seed, steps=steps,
                                               progress=True, fingerprint=expected)
                run.log_metrics({"accuracy": record["accuracy"], "train_accuracy": record["train_accuracy"],
                                 "seconds": record["seconds"]})
                run.set_tags({"rfpp.features.path": record["path"], "rfpp.features.note": STAND_IN_NOTE})
                typer.echo(json.dumps({k: record[k] for k in ("path", "accuracy", "num_train", "num_heldout",
                                                              "seconds")}))
                typer.echo(f"digits classifier: held-out accuracy {record['accuracy']:.2%} on "
                           f"{record['num_heldout']} images; written to {record['path']}")
                if record["accuracy"] < min_accuracy:  # inside the run: it ends FAILED with the reason
                    fail(f"held-out accuracy {record['accuracy']:.2%} is below --min-accuracy {min_accuracy:.0%}")
        except (ValueError, FileNotFoundError, OSError, TrackingError, CheckpointError, LockedError) as err:
            fail(str(err))


def features_fingerprint(config: Config, steps: int, seed: int) -> dict[str, Any]:
    """The feature network's fingerprint: its profile sections and the command's --steps and --seed."""
    from rfpp.eval.digits_classifier import FORMAT, VERSION
    from rfpp.provenance import fingerprint, stage_settings

    settings = {**stage_settings(config, "features"), "features": {"steps": steps, "seed": seed}}
    return fingerprint("features", f"{FORMAT}/{VERSION}", settings)


def kept_record(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the file at `path` when it verifies and carries fingerprint `expected` (it is then kept);
    else None, saying why when a file is there."""
    from rfpp.checkpoints import CheckpointError
    from rfpp.eval.digits_classifier import read_feature_net_file
    from rfpp.provenance import difference, kept

    if not path.exists():
        return None
    try:
        payload = read_feature_net_file(path)
        why = difference(payload.get("fingerprint"), expected)
    except CheckpointError as err:
        why = f"it cannot be used: {err}"
    if not kept(f"feature network {path}", why, typer.echo):
        return None
    return {"accuracy": payload["accuracy"], **payload["train"], "path": str(path)}
