"""`rfpp <stage>`: one command per pipeline stage.

Every stage takes `--profile` (params/<profile>.yaml or a YAML path) and dotted overrides such as
`train.lr=1e-4`; `--dry-run` prints the resolved configuration and exits. Exit codes: 0 success,
2 bad usage or configuration, 3 a stage this version does not provide yet, 1 any other failure.
"""

from __future__ import annotations

import sys

import typer

from rfpp.config import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rfpp: one-round Reflow (2-rectified flow++) from pretrained diffusion models.")

EXIT_USAGE = 2
EXIT_MISSING_STAGE = 3

ProfileOpt = typer.Option("digits", "--profile", "-p", help="Profile name in params/ or a YAML path.")
OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-4 sample.nfe=[1,2].")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved configuration and exit.")


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def resolve(profile: str, overrides: list[str] | None, dry_run: bool) -> Config:
    """Load and validate the configuration; print it and stop when `dry_run`."""
    try:
        config = load_config(profile, overrides or [])
    except ConfigError as err:
        fail(str(err), EXIT_USAGE)
    if dry_run:
        typer.echo(config.to_yaml().rstrip())
        raise typer.Exit(0)
    return config


def not_built(stage: str, issue: int) -> None:
    fail(f"the '{stage}' stage is not built yet in this version of rfpp (tracked in issue #{issue}); "
         "the pipeline stops here", EXIT_MISSING_STAGE)


@app.command()
def config(profile: str = ProfileOpt, overrides: list[str] = OverridesArg) -> None:
    """Print the resolved configuration of a profile (after overrides)."""
    resolve(profile, overrides, dry_run=True)


@app.command()
def teacher(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt) -> None:
    """Get the teacher: download an EDM snapshot, or train a 1-rectified flow for small data."""
    resolve(profile, overrides, dry_run)
    not_built("teacher", 3)


@app.command()
def pairs(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
          shard: int = typer.Option(0, help="Index of the shard to make."),
          num_shards: int = typer.Option(1, help="Number of shards the work is split into.")) -> None:
    """Generate (noise, image) pairs with the teacher, one shard at a time."""
    resolve(profile, overrides, dry_run)
    not_built("pairs", 3)


@app.command()
def train(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
          arm: str = typer.Option(None, help="Training arm (a key of train.arms)."),
          resume: bool = typer.Option(False, help="Continue from the arm's last checkpoint.")) -> None:
    """One round of Reflow for one arm."""
    resolve(profile, overrides, dry_run)
    not_built("train", 4)


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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
