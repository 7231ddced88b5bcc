"""`rfpp sample`, `rfpp fid`, `rfpp report`: what a user touches after training."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, not_built, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def sample(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
               nfe: int = typer.Option(1, help="Number of function evaluations."),
               checkpoint: str = typer.Option(None, help="Checkpoint to sample from.")) -> None:
        """Few-step sampling from a trained student."""
        resolve(profile, overrides, dry_run)
        not_built("sample", 5)

    @app.command()
    def fid(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt) -> None:
        """FID of a sample set against reference statistics."""
        resolve(profile, overrides, dry_run)
        not_built("fid", 5)

    @app.command()
    def report(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt) -> None:
        """Write the markdown report of every arm and NFE."""
        resolve(profile, overrides, dry_run)
        not_built("report", 5)
