"""`rfpp features`: train the small digits classifier that serves as perceptual and FID feature network."""

from __future__ import annotations

import json

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, fail, resolve


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
        """
        config = resolve(profile, overrides, dry_run)
        from rfpp.eval.digits_classifier import STAND_IN_NOTE, build_feature_net
        from rfpp.paths import ProfilePaths
        from rfpp.tracking import TrackingError, start_run

        path = out or str(ProfilePaths.of(config.profile).features)
        try:
            with start_run(config, stage="features") as run:  # one MLflow run, like every stage
                run.log_config(config)
                resolution = config.eval.feature_resolution or config.data.resolution
                record = build_feature_net(config.data.dataset, resolution, path,
                                           seed=config.seed if seed is None else seed, steps=steps, progress=True)
                run.log_metrics({"accuracy": record["accuracy"], "train_accuracy": record["train_accuracy"],
                                 "seconds": record["seconds"]})
                run.set_tags({"rfpp.features.path": record["path"], "rfpp.features.note": STAND_IN_NOTE})
                typer.echo(json.dumps({k: record[k] for k in ("path", "accuracy", "num_train", "num_heldout",
                                                              "seconds")}))
                typer.echo(f"digits classifier: held-out accuracy {record['accuracy']:.2%} on "
                           f"{record['num_heldout']} images; written to {record['path']}")
                if record["accuracy"] < min_accuracy:  # inside the run: it ends FAILED with the reason
                    fail(f"held-out accuracy {record['accuracy']:.2%} is below --min-accuracy {min_accuracy:.0%}")
        except (ValueError, FileNotFoundError, OSError, TrackingError) as err:
            fail(str(err))
