"""Shared CLI pieces: profile/override options, config resolution, errors and exit codes."""

from __future__ import annotations

import os

import typer

from rfpp.config import Config, ConfigError, load_config

EXIT_FAILURE = 1
EXIT_USAGE = 2

ProfileOpt = typer.Option("digits", "--profile", "-p", help="Profile name in params/ or a YAML path.")
OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-4 sample.nfe=[1,2].")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved configuration and exit.")


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print `error: message` on stderr and exit with `code`."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    exit_ = typer.Exit(code)
    exit_.rfpp_message = message  # type: ignore[attr-defined]  # an open MLflow run records it (rfpp.tracking)
    raise exit_


def resolve(profile: str, overrides: list[str] | None, dry_run: bool, gpus: int = 1) -> Config:
    """Load and validate the configuration; print it and stop when `dry_run`.

    With `device: auto` a stage then claims `gpus` free GPUs for this process (rfpp.devices: a lock per
    device, so that parallel Snakemake jobs each get their own); nothing happens without GPUs, when
    CUDA_VISIBLE_DEVICES is already set, or inside torchrun (whose launcher hands out the devices).
    """
    try:
        config = load_config(profile, overrides or [])
    except ConfigError as err:
        fail(str(err), EXIT_USAGE)
    if dry_run:
        typer.echo(config.to_yaml().rstrip())
        raise typer.Exit(0)
    if gpus > 0 and "LOCAL_RANK" not in os.environ:
        from rfpp.devices import GPUClaimError, claim_for_device

        try:
            claim_for_device(config.device, gpus)
        except GPUClaimError as err:
            fail(str(err))
    return config
