"""`rfpp train`: one round of Reflow for one arm."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, not_built, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def train(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
              arm: str = typer.Option(None, help="Training arm (a key of train.arms)."),
              resume: bool = typer.Option(False, help="Continue from the arm's last checkpoint.")) -> None:
        """One round of Reflow for one arm."""
        resolve(profile, overrides, dry_run)
        not_built("train", 4)
