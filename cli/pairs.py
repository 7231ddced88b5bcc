"""`rfpp pairs`: (noise, image) pairs from the teacher, one shard at a time."""

from __future__ import annotations

import typer

from cli.common import EXIT_USAGE, DryRunOpt, OverridesArg, ProfileOpt, fail, reported, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def pairs(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
              shard: int = typer.Option(None, help="Make only this shard (0-based); one job per GPU or node."),
              num_shards: int = typer.Option(None, min=1, help="Number of shards (default: pairs.num_shards)."),
              finalize: bool = typer.Option(False, "--finalize", help="Only verify the shards and write the manifest."),
              progress: bool = typer.Option(True, help="Show progress bars.")) -> None:
        """Generate pairs.count (noise, image) pairs with the teacher into results/<profile>/pairs/.

        Without --shard every shard is made, then the manifest. Interrupted runs resume: finished shards
        and finished chunks made with the same settings and teacher are kept; those made otherwise are made
        again (a line says which setting differs). A second process on the same shard fails at once.
        The noise is not stored; it is regenerated from (pairs.seed, index).
        """
        config = resolve(profile, overrides, dry_run)
        from rfpp.checkpoints import CheckpointError
        from rfpp.pairs import PairSetError
        from rfpp.pairs.stage import run_finalize, run_shard
        from rfpp.provenance import LockedError

        n = num_shards or config.pairs.num_shards
        if shard is not None and not 0 <= shard < n:
            fail(f"--shard {shard} is out of range for {n} shards (0..{n - 1})", EXIT_USAGE)
        if shard is not None and finalize:
            fail("--shard and --finalize exclude each other", EXIT_USAGE)
        if config.pairs.source:
            fail(f"profile {config.profile!r} takes its pairs from pairs.source={config.pairs.source}: there are none "
                 "to make here (drop pairs.source to make them)", EXIT_USAGE)
        with reported(CheckpointError, PairSetError, ValueError, LockedError):
            if not finalize:
                for k in [shard] if shard is not None else range(n):
                    record = run_shard(config, k, n, progress=progress)
                    typer.echo(f"shard {k}: pairs {record['start']}..{record['stop'] - 1}")
            if shard is None:
                manifest = run_finalize(config, n)
                typer.echo(f"manifest: {manifest['spec']['count']} pairs in {n} shards")
