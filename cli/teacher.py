"""`rfpp teacher`: get the teacher (download an EDM snapshot, or train a 1-rectified flow)."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, not_built, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def teacher(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt) -> None:
        """Get the teacher: download an EDM snapshot, or train a 1-rectified flow for small data."""
        resolve(profile, overrides, dry_run)
        not_built("teacher", 3)
