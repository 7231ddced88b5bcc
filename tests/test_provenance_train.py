"""Provenance of `rfpp train` (issue 11): checkpoints are sealed and verified (a corrupted one is skipped and named,
never resumed from), checkpoints and final.pt record the run's inputs (a resume from other inputs is refused), one
process at a time trains an arm, and --restart checks the config and the inputs before it moves anything aside.
Tiny worlds (tests/train_helpers.py); the real `rfpp train` command, in-process or as subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import flip_tensor_bytes, load_state, make_pairs, world_config  # noqa: E402

from rfpp.checkpoints import CheckpointError, file_sha256, load_model, model_digest  # noqa: E402
from rfpp.provenance import LockedError, fingerprint, output_lock, seal, stage_settings  # noqa: E402
from rfpp.train import ResumeError, list_checkpoints, read_checkpoint, train_arm  # noqa: E402

ARM = "results/tiny/train/baseline/seed0"


def fresh(world: Path, dest: Path) -> Path:
    shutil.copytree(world, dest)
    return dest


def rfpp_train(root: Path, *args: str):
    """`rfpp train --profile tiny.yaml --no-progress ARGS` run in-process from `root` (stdout and stderr together)."""
    from cli.main import app

    cwd = os.getcwd()
    os.chdir(root)
    try:
        return CliRunner().invoke(app, ["train", "--profile", "tiny.yaml", "--no-progress", *args])
    finally:
        os.chdir(cwd)


def snapshot(directory: Path) -> dict[str, str]:
    """{file name: sha256} of every file in `directory`."""
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    return load_state(root / ARM / "final.pt")["state_dict"]


def _env() -> dict[str, str]:
    env = dict(os.environ, RFPP_TRACKING="off", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


# ---- sealed checkpoints ----------------------------------------------------------------------------------------
def test_a_corrupted_newest_checkpoint_is_skipped_and_named(world, tmp_path):
    """64 bytes flipped in the tensor data of the newest checkpoint: --resume says so and goes on from the one
    before, ending bitwise where an uninterrupted run ends."""
    over = ["train.steps=9", "train.ckpt_every=3", "train.keep_last=3"]
    ref = fresh(world, tmp_path / "ref")
    assert rfpp_train(ref, "--arm", "baseline", *over).exit_code == 0

    run = fresh(world, tmp_path / "run")
    assert rfpp_train(run, "--arm", "baseline", "--until", "6", *over).exit_code == 0
    ckpts = run / ARM / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [3, 6]
    flip_tensor_bytes(ckpts / "step-00000006.pt")
    with pytest.raises(CheckpointError, match=r"step-00000006\.pt is corrupted"):
        read_checkpoint(ckpts / "step-00000006.pt")

    res = rfpp_train(run, "--arm", "baseline", "--resume", *over)
    assert res.exit_code == 0, res.output
    assert "skipping checkpoint step-00000006.pt" in res.output and "is corrupted" in res.output
    assert "resuming from" in res.output and "step-00000003.pt (step 3)" in res.output
    a, b = final_weights(ref), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(ckpts / "step-00000006.pt")["step"] == 6  # made again, sound


def test_a_lone_corrupted_checkpoint_fails_naming_it(world, tmp_path):
    run = fresh(world, tmp_path / "w")
    assert rfpp_train(run, "--arm", "baseline", "--until", "3").exit_code == 0
    ckpts = run / ARM / "checkpoints"
    flip_tensor_bytes(ckpts / "step-00000003.pt")
    before = snapshot(ckpts)
    res = rfpp_train(run, "--arm", "baseline", "--resume")
    assert res.exit_code == 1, res.output
    assert "step-00000003.pt" in res.output and "corrupted" in res.output and "--restart" in res.output
    assert snapshot(ckpts) == before and not (run / ARM / "final.pt").exists()


def test_rank_checksums_must_agree_with_the_weights(world, tmp_path):
    """A checkpoint whose seal is sound but whose rank checksums disagree (with each other or with its weights) is
    refused: the ranks were out of sync, or the weights are not the ones the checksums were taken of."""
    root = fresh(world, tmp_path / "w")
    config, paths = world_config(root)
    train_arm(config, "baseline", paths, until=3, progress=False)
    path = list_checkpoints(paths.train_dir("baseline", 0) / "checkpoints")[0][1]
    payload = torch.load(path, map_location="cpu", weights_only=True)
    good = payload["rank_checksums"][0]
    for sums in ([good, "0" * 64], ["0" * 64]):
        torch.save(seal({**payload, "rank_checksums": sums}), path)
        with pytest.raises(CheckpointError, match="rank checksums"):
            read_checkpoint(path)
    torch.save(seal({**payload, "rank_checksums": [good, good]}), path)
    assert read_checkpoint(path)["step"] == 3


# ---- inputs ----------------------------------------------------------------------------------------------------
def test_final_model_records_its_fingerprint_and_a_resume_refuses_other_inputs(world, tmp_path):
    root = fresh(world, tmp_path / "w")
    config, paths = world_config(root)
    train_arm(config, "baseline", paths, progress=False)
    manifest = json.loads(paths.pairs_manifest.read_text())
    pairs_id = (manifest.get("fingerprint") or {}).get("id") or file_sha256(paths.pairs_manifest)
    inputs = {"pairs": pairs_id, "teacher": model_digest(paths.teacher)}
    _, info = load_model(paths.student("baseline", 0))
    expected = fingerprint("train", "rfpp.model/1", stage_settings(config.for_training_seed(0), "train", "baseline"),
                           inputs)
    assert info["meta"]["fingerprint"] == expected
    last = list_checkpoints(paths.train_dir("baseline", 0) / "checkpoints")[-1][1]
    assert read_checkpoint(last)["inputs"] == inputs

    train_arm(config, "baseline", paths, restart=True, until=3, progress=False)
    make_pairs(paths, seed=4)  # the pairs remade (here: other noise) after the checkpoint
    with pytest.raises(ResumeError, match=r"step-00000003\.pt was made from other inputs: input pairs="):
        train_arm(config, "baseline", paths, resume=True, progress=False)


# ---- one process per arm ---------------------------------------------------------------------------------------
def test_a_held_arm_lock_stops_a_run_before_it_reads_or_writes(world, tmp_path):
    root = fresh(world, tmp_path / "w")
    config, paths = world_config(root)
    train_arm(config, "baseline", paths, until=3, progress=False)
    ckpts = paths.train_dir("baseline", 0) / "checkpoints"
    before = snapshot(ckpts)
    with output_lock(paths.train_dir("baseline", 0) / ".lock", "a test"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            train_arm(config, "baseline", paths, restart=True, progress=False)
    assert snapshot(ckpts) == before and not (paths.train_dir("baseline", 0) / "checkpoints.previous").exists()


@pytest.mark.slow
def test_two_trainings_of_one_arm_started_together(world, tmp_path):
    """Two `rfpp train --arm baseline --restart` with other learning rates, started together: one trains, the other
    exits 1 at once naming the first one's pid; final.pt and config.yaml describe the same run."""
    root = fresh(world, tmp_path / "w")
    lrs = ["1e-3", "5e-4"]
    procs = [subprocess.Popen(["rfpp", "train", "--profile", "tiny.yaml", "--arm", "baseline", "--restart",
                               "--no-progress", f"train.lr={lr}", "train.steps=20", "train.ckpt_every=10"],
                              cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for lr in lrs]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], errs
    won, lost = codes.index(0), codes.index(1)
    assert f"pid {procs[won].pid}" in errs[lost] and "the training of arm 'baseline'" in errs[lost]
    meta = load_model(root / ARM / "final.pt")[1]["meta"]
    saved = yaml.safe_load((root / ARM / "config.yaml").read_text())
    assert json.loads(json.dumps(meta["config"])) == saved
    assert saved["train"]["lr"] == float(lrs[won])


# ---- --restart -------------------------------------------------------------------------------------------------
def test_restart_checks_the_config_and_the_inputs_before_it_moves_anything(world, tmp_path):
    root = fresh(world, tmp_path / "w")
    over = ["train.steps=9"]
    assert rfpp_train(root, "--arm", "baseline", "--until", "6", *over).exit_code == 0
    ckpts, previous = root / ARM / "checkpoints", root / ARM / "checkpoints.previous"
    before = snapshot(ckpts)
    assert list(before) == ["step-00000003.pt", "step-00000006.pt"]
    manifest, teacher = root / "results/tiny/pairs/manifest.json", root / "results/tiny/teacher/teacher.pt"

    def refused(code: int, message: str, *extra: str) -> None:
        res = rfpp_train(root, "--arm", "baseline", "--restart", *over, *extra)
        assert res.exit_code == code and message in res.output, res.output
        assert snapshot(ckpts) == before and not previous.exists()

    manifest.rename(manifest.with_suffix(".moved"))
    refused(1, "rfpp pairs")
    manifest.with_suffix(".moved").rename(manifest)
    flip_tensor_bytes(teacher)
    refused(1, "is corrupted")
    shutil.copy(world / "results/tiny/teacher/teacher.pt", teacher)
    refused(1, "rfpp features", "train.arms.baseline.loss=lpips-huber", "train.perceptual=digits-classifier")
    refused(2, "train.arms.baseline.a", "train.arms.baseline.a=nan")

    res = rfpp_train(root, "--arm", "baseline", "--restart", *over)
    assert res.exit_code == 0, res.output
    assert "moved the old checkpoints" in res.output and not previous.exists()
    assert [s for s, _ in list_checkpoints(ckpts)] == [6, 9] and (root / ARM / "final.pt").exists()
    # A restart that stops early (--until) leaves no student of the old run behind, passing for this one's.
    res = rfpp_train(root, "--arm", "baseline", "--restart", "--until", "3", *over)
    assert res.exit_code == 0, res.output
    assert not (root / ARM / "final.pt").exists() and not previous.exists()


@pytest.mark.slow
def test_restart_keeps_the_old_checkpoints_until_the_new_run_writes_one(world, tmp_path):
    """A --restart killed (-9) before its first checkpoint leaves the old ones intact in checkpoints.previous/;
    the next run that writes a checkpoint deletes them."""
    root = fresh(world, tmp_path / "w")
    config, paths = world_config(root)
    train_arm(config, "baseline", paths, until=3, progress=False)
    ckpts, previous = root / ARM / "checkpoints", root / ARM / "checkpoints.previous"
    before = snapshot(ckpts)
    victim = subprocess.Popen(["rfpp", "train", "--profile", "tiny.yaml", "--arm", "baseline", "--restart",
                               "--no-progress", "train.steps=100000", "train.ckpt_every=100000"],
                              cwd=root, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (previous / "step-00000003.pt").exists():
            assert victim.poll() is None, victim.stderr.read().decode()[-3000:] if victim.stderr else ""
            assert time.monotonic() < deadline, "the old checkpoints were never moved aside"
            time.sleep(0.05)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    assert snapshot(previous) == before and not list_checkpoints(ckpts)

    res = rfpp_train(root, "--arm", "baseline", "--restart")
    assert res.exit_code == 0, res.output
    assert "deleted the checkpoints of the previous run" in res.output and not previous.exists()
    assert [s for s, _ in list_checkpoints(ckpts)] == [3, 6]
