"""`rfpp <stage>`: one command per pipeline stage.

Every stage takes `--profile` (params/<profile>.yaml or a YAML path) and dotted overrides such as
`train.lr=1e-4`; `--dry-run` prints the resolved configuration and exits. Exit codes: 0 success,
1 a failure (the message names it and what to do), 2 bad usage or configuration. Each stage's command
lives in its own module cli/<stage>.py with a `register(app)`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from cli import dvc, evaluate, features, interop, pairs, runs, teacher, train
from cli.common import EXIT_FAILURE, OverridesArg, ProfileOpt, resolve


class _App(typer.Typer):
    """The Typer app, with the last word on errors: a failure no command turned into its own message (a file
    system error, a corrupted or locked output, an unusable tracking store) is one line and exit 1, never a
    traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (NotADirectoryError, FileExistsError) as err:
            typer.secho(f"error: cannot make the folder {err.filename}: a file of that name (or of one of its "
                        "parents) is in the way; move it or choose another output", err=True, fg=typer.colors.RED)
            sys.exit(EXIT_FAILURE)
        except OSError as err:
            typer.secho(f"error: cannot use {err.filename or 'a file'}: {err.strerror or err}; check its "
                        "permissions and free space, or choose another output", err=True, fg=typer.colors.RED)
            sys.exit(EXIT_FAILURE)
        except Exception as err:
            from rfpp.checkpoints import CheckpointError  # here, not at start: a command without torch stays so
            from rfpp.provenance import LockedError, ProvenanceError
            from rfpp.tracking import TrackingError

            if not isinstance(err, CheckpointError | LockedError | ProvenanceError | TrackingError):
                raise
            typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
            sys.exit(EXIT_FAILURE)


app = _App(add_completion=False, no_args_is_help=True,
           help="rfpp: one-round Reflow (2-rectified flow++) from pretrained diffusion models.")


@app.callback()
def _start() -> None:
    """Every stage dies with the Snakemake run or torchrun launcher that started it (rfpp.lifeline)."""
    from rfpp import lifeline

    lifeline.install()


@app.command()
def config(profile: str = ProfileOpt, overrides: list[str] = OverridesArg) -> None:
    """Print the resolved configuration of a profile (after overrides)."""
    resolve(profile, overrides, dry_run=True, gpus=0)


for module in (teacher, features, pairs, train, evaluate, dvc, interop, runs):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
