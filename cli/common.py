"""Shared CLI pieces: profile/override options, config resolution, errors and exit codes.

An option that stands for a profile key (`rfpp sample --solver heun`) is a shorthand: `resolve` turns it into
the dotted override (`sample.solver=heun`, after the positional ones, so the option wins), and the configuration
checks it like any override; a configuration error then also names the options that set the keys it names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

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


def shorthand_overrides(shorthands: Mapping[str, tuple[str, Any]]) -> list[str]:
    """{key: (option, value)} → ['key=value', …] for the options given (value not None); values as JSON (YAML)."""
    return [f"{key}={json.dumps(value)}" for key, (_, value) in shorthands.items() if value is not None]


def _naming_options(message: str, shorthands: Mapping[str, tuple[str, Any]]) -> str:
    """`message`, followed by the options of this command that set the keys it names, in the order named."""
    named = sorted((m.start(), f"{option} ({key})") for key, (option, _) in shorthands.items()
                   if (m := re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message)))
    return f"{message}; options that set these keys: {', '.join(n for _, n in named)}" if named else message


def resolve(profile: str, overrides: list[str] | None, dry_run: bool, gpus: int = 1,
            shorthands: Mapping[str, tuple[str, Any]] | None = None) -> Config:
    """Load and validate the configuration, with the given `shorthands` ({key: (option, value or None)}) as
    overrides after `overrides`; print it and stop when `dry_run`.

    With `device: auto` a stage then claims `gpus` free GPUs for this process (rfpp.devices: a lock per
    device, so that parallel Snakemake jobs each get their own); nothing happens without GPUs, when
    CUDA_VISIBLE_DEVICES is already set, or inside torchrun (whose launcher hands out the devices).
    """
    shorthands = shorthands or {}
    try:
        config = load_config(profile, [*(overrides or []), *shorthand_overrides(shorthands)])
    except ConfigError as err:
        fail(_naming_options(str(err), shorthands), EXIT_USAGE)
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


@contextlib.contextmanager
def reported(*failures: type[BaseException]) -> Iterator[None]:
    """Turn the library's errors into one line: a bad configuration or device (ConfigError, DeviceError) exits 2,
    any of `failures` exits 1."""
    from rfpp.devices import DeviceError

    try:
        yield
    except (ConfigError, DeviceError) as err:
        fail(str(err), EXIT_USAGE)
    except failures as err:
        fail(str(err))
