"""`rfpp features`: train the small digits classifier that serves as perceptual and FID feature network."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, not_built, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def features(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt) -> None:
        """Train the profile's feature network (the digits classifier) used by the perceptual loss and FID."""
        resolve(profile, overrides, dry_run)
        not_built("features", 5)
