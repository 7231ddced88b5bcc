"""`rfpp runs`: the arm runs of a profile from the MLflow store, side by side (rfpp.runs does the work)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import EXIT_USAGE, ProfileOpt, fail


def _profile_name(profile: str) -> str:
    """A profile's name: a YAML path is read for its `profile:` key (its file may be gone: a name is taken as is)."""
    if Path(profile).suffix not in (".yaml", ".yml"):
        return profile
    from rfpp.config import ConfigError, load_config

    try:
        return load_config(profile).profile
    except ConfigError as err:
        fail(str(err), EXIT_USAGE)
    return profile


def register(app: typer.Typer) -> None:
    @app.command()
    def runs(profile: str = ProfileOpt,
             uri: str = typer.Option(None, "--uri", help="The MLflow store (default: MLFLOW_TRACKING_URI, else "
                                                         "sqlite:///mlflow.db here, what `mlflow ui` opens).")) -> None:
        """Print the profile's arm runs from the MLflow store: one row per arm run (an arm and training seed of a
        pipeline run), the settings that differ between the rows, and FID per NFE (FID@k: metric fid_nfe<k>).

        The same runs compare in the MLflow UI: experiment rfpp-<profile>, select the arm runs (named
        <arm>-seed<k>), Compare. Exit codes: 0 printed, 1 no such experiment or no arm run in the store,
        2 bad usage."""
        from rfpp.runs import RunsError, compare, format_table

        name = _profile_name(profile)
        try:
            typer.echo(format_table(compare(name, uri)), nl=False)
        except RunsError as err:
            fail(str(err))
