"""Child processes die with the run that started them (rfpp.lifeline): a killed parent leaves no stage behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workflow import tiny_profile
from workflow_helpers import SNAKEMAKE, env, make_workspace

from rfpp.lifeline import ENV_PARENT, alive, anchor_value, start_time


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids among `pids` still running (not zombies) after waiting up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if start_time(p) is not None]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_anchor_names_a_live_process_and_not_a_dead_or_reused_one():
    me = anchor_value()
    assert alive(me)
    pid, started = me.split(":")
    assert not alive(f"{pid}:{int(started) + 1}")  # same pid, another start time: a reused pid
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not alive(anchor_value(proc.pid))


def test_a_watched_parent_killed_with_sigkill_stops_the_child_and_its_finally_runs(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    marker = tmp_path / "cleaned-up"
    code = ("import time\nfrom rfpp import lifeline\nassert lifeline.install()\n"
            f"try:\n    time.sleep(120)\nfinally:\n    open({str(marker)!r}, 'w').close()\n")
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, ENV_PARENT: anchor_value(parent.pid)},
                             stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert child.poll() is None
    parent.kill()
    parent.wait()
    try:
        _, err = child.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail("the child outlived its killed parent by 10 s")
    assert child.returncode != 0
    assert f"(pid {parent.pid}) is gone" in err
    assert marker.exists()


def _processes_in(folder: Path) -> list[int]:
    """Pids of live processes whose working directory is `folder` (the stages of a workspace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == folder and start_time(int(entry.name)) is not None:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_killing_snakemake_with_sigkill_leaves_no_training_job(tmp_path):
    """snakemake -> bash -> rfpp train (the baseline arm, which needs no feature network; with DataLoader workers):
    after kill -9 of snakemake, nothing of the run is left after a few seconds (before rfpp.lifeline, the training
    ran on as an orphan and raced the re-run)."""
    profile = tiny_profile()
    # lpips-vgg16 as the (unused) perceptual network: the DAG then trains no digits classifier before the L2 arm
    profile["train"].update(steps=100000, ckpt_every=100000, num_workers=1, perceptual="lpips-vgg16")
    work = make_workspace(tmp_path, {"tiny": profile}).resolve()
    log = open(tmp_path / "snakemake.log", "w")
    smk = subprocess.Popen([SNAKEMAKE, "results/tiny/train/baseline/seed0/final.pt", "--cores", "2", "--config",
                            "profile=tiny"], cwd=work, env=env(), stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    deadline = time.monotonic() + 240
    trainers: list[int] = []
    while time.monotonic() < deadline and smk.poll() is None:
        trainers = [p for p in _processes_in(work)
                    if b"train" in Path(f"/proc/{p}/cmdline").read_bytes() and p != smk.pid]
        if trainers and (work / "results/tiny/train/baseline").exists():
            break
        time.sleep(0.5)
    assert smk.poll() is None and trainers, (tmp_path / "snakemake.log").read_text()[-3000:]
    time.sleep(3)  # the training is under way (its DataLoader workers started)
    before = _processes_in(work)
    assert len(before) >= 2  # at least the shell and the trainer
    os.kill(smk.pid, signal.SIGKILL)
    smk.wait()
    left = _wait_gone([p for p in before if p != smk.pid], 20)
    try:
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    finally:
        for p in left:
            os.kill(p, signal.SIGKILL)
