"""`rfpp features`: train the small digits classifier that serves as perceptual and FID feature network."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, reported, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def features(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
                 out: str = typer.Option(None, help="Output file (default results/<profile>/features/classifier.pt)."),
                 steps: int = typer.Option(None, help="Training steps (batch 64, one CPU thread: seconds). Sets "
                                                      "eval.feature_steps."),
                 seed: int = typer.Option(None, help="Training seed (default: the profile's seed)."),
                 min_accuracy: float = typer.Option(0.9, help="Fail when the held-out accuracy is below this."),
                 ) -> None:
        """Train the profile's feature network (the digits classifier) used by the perceptual loss and FID.

        A small CNN on the profile's dataset at eval.feature_resolution (default data.resolution; images
        are resized to it bilinearly, as LPIPS resizes to 224), with a stratified 20% held-out split whose
        accuracy is reported and stored in the file. Its features stand in for VGG16 (LPIPS) and Inception
        (FID) where those cannot be had; every output that uses it says so.

        The file records the stage's fingerprint (seed, data, eval.feature_resolution, eval.feature_steps and
        the --seed used); an existing file that verifies and carries the same fingerprint is kept, any other is remade
        (rfpp.eval.features_stage).
        """
        config = resolve(profile, overrides, dry_run, shorthands={"eval.feature_steps": ("--steps", steps)})
        from rfpp.checkpoints import CheckpointError
        from rfpp.eval.features_stage import run_features
        from rfpp.provenance import LockedError
        from rfpp.tracking import TrackingError

        with reported(ValueError, FileNotFoundError, OSError, TrackingError, CheckpointError, LockedError):
            run_features(config, out=out, seed=seed, min_accuracy=min_accuracy, log=typer.echo)
