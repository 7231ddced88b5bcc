"""`rfpp teacher`: get the teacher (download an EDM snapshot, or train a 1-rectified flow)."""

from __future__ import annotations

import typer

from cli.common import DryRunOpt, OverridesArg, ProfileOpt, reported, resolve


def register(app: typer.Typer) -> None:
    @app.command()
    def teacher(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
                progress: bool = typer.Option(True, help="Show progress bars.")) -> None:
        """Make results/<profile>/teacher/teacher.pt.

        teacher.source decides how: `train` trains a 1-rectified flow on the profile's data (the digits
        profile's teacher) and saves a sample grid beside it; an EDM snapshot name (e.g. cifar10-uncond-ve),
        URL or .pkl path is downloaded (resumable, sha256 recorded and checked) and loaded without executing
        anything from the file; a .pt/.pth state dict uses teacher.net as its configuration.
        An existing teacher.pt is kept only when it was made with the same settings (and source file);
        otherwise it is made again, and a line names the setting that differs.
        """
        config = resolve(profile, overrides, dry_run)
        from rfpp.checkpoints import CheckpointError
        from rfpp.provenance import LockedError
        from rfpp.teachers import ChecksumError, DownloadError, TeacherLoadError, UnsafePickleError
        from rfpp.teachers.stage import run_teacher_stage

        with reported(CheckpointError, ChecksumError, DownloadError, TeacherLoadError, UnsafePickleError,
                      FileNotFoundError, ValueError, FloatingPointError, LockedError):
            path = run_teacher_stage(config, progress=progress)
        typer.echo(f"teacher: {path}")
