"""Test helpers of the workflow layer: real `snakemake`/`dvc` runs and dry runs, and temporary projects holding this
checkout's workflow files with a profile of the test's own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DVC = str(BIN / "dvc")


def env(**extra: str) -> dict[str, str]:
    """The environment of a stage run: this interpreter's tools first on PATH, tracking off, unbuffered output."""
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"  # `rfpp` and `python` resolve to this interpreter's
    out.update(RFPP_TRACKING="off", PYTHONUNBUFFERED="1", **extra)
    return out


def run(args: list[str], cwd: Path = ROOT, timeout: int = 600, **extra_env: str) -> str:
    """Run a command (see `env`); assert it succeeds; its stdout + stderr."""
    proc = subprocess.run(args, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def dry_run_jobs(*args: str, cwd: Path = ROOT, force: bool = True) -> list[dict]:
    """Jobs of `snakemake -n -p`: rule, input, output, resources and shell command of each (every job of the DAG
    with `force`, whatever results/ already holds; else only those that would run)."""
    text = run([SNAKEMAKE, "-n", "-p", "--cores", "1", *(["--forceall"] if force else []), *args], cwd=cwd)
    jobs, job = [], None
    for line in text.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            job = {"rule": m.group(1), "input": [], "output": [], "resources": {}, "shell": None}
            jobs.append(job)
        elif job is None:
            continue
        elif m := re.match(r"^\s+(input|output): (.*)$", line):
            job[m.group(1)] = [p.strip() for p in m.group(2).split(",")]
        elif m := re.match(r"^\s+resources: (.*)$", line):
            job["resources"] = dict(kv.strip().split("=", 1) for kv in m.group(1).split(", "))
        elif line.startswith("Shell command: "):
            job["shell"] = line.removeprefix("Shell command: ").strip()
    assert jobs or "Nothing to be done" in text, text[-3000:]
    return jobs


def make_workspace(folder: Path, profiles: dict[str, dict]) -> Path:
    """A temporary project `folder`/work: this checkout's Snakefile, dvc.yaml, .dvcignore and workflow/, plus
    params/<name>.yaml for each of `profiles`."""
    work = folder / "work"
    (work / "params").mkdir(parents=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    for name, profile in profiles.items():
        (work / "params" / f"{name}.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return work
