"""End-to-end `rfpp train` in subprocesses: two processes under torchrun (gloo) with gradients in sync, a run
killed with SIGKILL and resumed that ends bitwise equal to an uninterrupted one, and MLflow records."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import load_state, world_config  # noqa: E402

from rfpp.train import list_checkpoints, read_checkpoint, train_arm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, RFPP_TRACKING="off", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy(world: Path, dest: Path) -> Path:
    shutil.copytree(world, dest)
    return dest


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "train", "--profile", "tiny.yaml", "--no-progress", *args]


def test_torchrun_two_processes_keep_gradients_in_sync(world, tmp_path, monkeypatch):
    root = _copy(world, tmp_path / "ddp")
    over = ["train.steps=4", "train.ckpt_every=4", "train.micro_batch=4", "train.num_workers=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "cli.main", "train", "--profile", "tiny.yaml", "--arm",
           "baseline", "--no-progress", *over]
    proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[train baseline seed 0] starting from the teacher") == 1  # rank 0 alone logs
    config, paths = world_config(root, over)
    ckpts = list_checkpoints(paths.train_dir("baseline", 0) / "checkpoints")
    assert [s for s, _ in ckpts] == [4]
    ckpt = read_checkpoint(ckpts[0][1])
    assert ckpt["data"]["world"] == 2 and len(ckpt["rng"]) == 2
    assert len(ckpt["rank_checksums"]) == 2 and ckpt["rank_checksums"][0] == ckpt["rank_checksums"][1]

    # One process with two accumulated micro-batches sees the same samples, timesteps and dropout masks: the
    # all-reduced DDP gradients must give the same weights up to float rounding.
    monkeypatch.setenv("RFPP_TRACKING", "off")
    single = _copy(world, tmp_path / "single")
    config1, paths1 = world_config(single, over)
    train_arm(config1, "baseline", paths1, progress=False)
    ddp_w = load_state(paths.student("baseline", 0))["state_dict"]
    one_w = load_state(paths1.student("baseline", 0))["state_dict"]
    moved = 0
    teacher = load_state(paths.teacher)["state_dict"]
    for key in ddp_w:
        assert torch.allclose(ddp_w[key], one_w[key], rtol=1e-4, atol=1e-6), key
        moved += int(not torch.equal(ddp_w[key], teacher[key]))
    assert moved > 10  # it did train


def test_sigkilled_run_resumes_bitwise_equal(world, tmp_path):
    over = ["train.steps=15", "train.ckpt_every=3", "train.micro_batch=4", "train.num_workers=2", "train.keep_last=1"]
    ref = _copy(world, tmp_path / "ref")
    proc = subprocess.run(_train_cmd("--arm", "baseline", *over), cwd=ref, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = _copy(world, tmp_path / "run")
    ckpt_dir = run / "results/tiny/train/baseline/seed0/checkpoints"
    victim = subprocess.Popen(_train_cmd("--arm", "baseline", *over), cwd=run, env=_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (ckpt_dir / "step-00000006.pt").exists():
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the trainer and its data-loader workers, mid-run
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (run / "results/tiny/train/baseline/seed0/final.pt").exists()
    killed_at = [s for s, _ in list_checkpoints(ckpt_dir)]
    assert killed_at and max(killed_at) < 15

    proc = subprocess.run(_train_cmd("--arm", "baseline", "--resume", *over), cwd=run, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    a = load_state(ref / "results/tiny/train/baseline/seed0/final.pt")["state_dict"]
    b = load_state(run / "results/tiny/train/baseline/seed0/final.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = read_checkpoint(ref / "results/tiny/train/baseline/seed0/checkpoints/step-00000015.pt")
    cb = read_checkpoint(ckpt_dir / "step-00000015.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [15]  # keep_last=1 pruned the rest


def test_mlflow_records_params_metrics_and_artifacts(world, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    root = _copy(world, tmp_path / "mlflow")
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RFPP_TRACKING", "on")
    config, paths = world_config(root, ["train.steps=4", "train.eval_every=2", "train.log_every=1"])
    train_arm(config, "huber", paths, progress=False)
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("rfpp.stage") == "train"]
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.lr"] == str(config.train.lr) and run.data.tags["rfpp.arm"] == "huber"
    for key in ("loss", "loss_pseudo_huber", "lr", "images_per_s", "straightness"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    assert len(client.get_metric_history(run.info.run_id, "straightness")) == 2  # step 2 and the end
    assert run.data.tags["rfpp.final_model"].endswith("train/huber/seed0/final.pt")
    assert "pseudo-huber" in run.data.tags["rfpp.loss"]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/step-00000002-nfe1.png", "samples/step-00000004-nfe2.png"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "timesteps")] == ["timesteps/timesteps.png"]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc/<p>/task/<p>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def test_torchrun_killed_with_sigkill_leaves_no_worker(world, tmp_path):
    """kill -9 of the torchrun launcher: its training workers (and their data-loader workers) stop within seconds
    instead of training on as orphans (rfpp.lifeline: a worker watches its launcher)."""
    from rfpp.lifeline import start_time

    root = _copy(world, tmp_path / "orphans")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "cli.main", "train", "--profile", "tiny.yaml", "--arm",
           "baseline", "--no-progress", "train.steps=100000", "train.ckpt_every=100000", "train.micro_batch=4",
           "train.num_workers=1"]
    launcher = subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(workers) < 4:  # 2 ranks, each with a data-loader worker
        assert launcher.poll() is None
        time.sleep(1)
        workers = _children(launcher.pid)
    assert len(workers) >= 4, workers
    time.sleep(2)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(start_time(p) is not None for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if start_time(p) is not None]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "workers outlived their killed launcher"
