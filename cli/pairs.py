"""`rfpp pairs`: (noise, image) pairs from the teacher, one shard at a time."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, not_built, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def pairs(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
              shard: int = typer.Option(0, help="Index of the shard to make."),
              num_shards: int = typer.Option(1, help="Number of shards the work is split into.")) -> None:
        """Generate (noise, image) pairs with the teacher, one shard at a time."""
        resolve(profile, overrides, dry_run)
        not_built("pairs", 3)
