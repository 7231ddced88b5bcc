"""`rfpp <stage>`: one command per pipeline stage.

Every stage takes `--profile` (params/<profile>.yaml or a YAML path) and dotted overrides such as
`train.lr=1e-4`; `--dry-run` prints the resolved configuration and exits. Exit codes: 0 success,
1 a failure (the message names it and what to do), 2 bad usage or configuration. Each stage's command
lives in its own module cli/<stage>.py with a `register(app)`.
"""

from __future__ import annotations

import sys

import typer

from cli import evaluate, features, pairs, teacher, train
from cli.common import OverridesArg, ProfileOpt, resolve

app = typer.Typer(add_completion=False, no_args_is_help=True,
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


for module in (teacher, features, pairs, train, evaluate):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
