"""The teacher and pairs stages end to end through the CLI: a 1-rectified-flow teacher trained on the
digits, an EDM snapshot served over HTTP from 127.0.0.1, sharded pairs and their manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from edm_snapshot_writer import precond_stand_in, randomize_, write_snapshot
from local_http_server import LocalFileServer

from rfpp.checkpoints import load_model
from rfpp.config import load_config
from rfpp.nets import SongUNet
from rfpp.pairs import PairDataset
from rfpp.paths import ProfilePaths
from rfpp.teachers import TeacherLoadError
from rfpp.teachers.stage import run_teacher_stage

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "profile": "tiny",
    "data": {"dataset": "digits", "resolution": 8},
    "teacher": {"source": "train", "arch": "SongUNet", "steps": 30, "batch": 16, "lr": 1e-3, "ema": 0.9,
                "net": {"img_resolution": 8, "in_channels": 1, "out_channels": 1, "model_channels": 16,
                        "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}},
    "pairs": {"count": 40, "num_shards": 2, "sampler": "rf_heun", "steps": 3, "batch": 8, "seed": 5},
}


def write_profile(folder: Path, **changes) -> Path:
    values = yaml.safe_load(yaml.safe_dump(TINY))
    for section, entries in changes.items():
        values[section].update(entries)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def rfpp_env() -> dict[str, str]:
    """The environment of an `rfpp` subprocess: this checkout, no tracking, one thread (steady on a busy machine;
    every run of a comparison has the same count), the test's rfpp cache."""
    env = {"PYTHONPATH": str(REPO), "RFPP_TRACKING": "off", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    if "RFPP_CACHE_DIR" in os.environ:
        env["RFPP_CACHE_DIR"] = os.environ["RFPP_CACHE_DIR"]
    return env


def rfpp(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=rfpp_env())


def test_trained_teacher_then_sharded_pairs_via_cli(tmp_path):
    profile = write_profile(tmp_path)
    result = rfpp(tmp_path, "teacher", "--profile", str(profile), "--no-progress")
    assert result.returncode == 0, result.stderr
    paths = ProfilePaths.of("tiny", tmp_path / "results")
    velocity, info = load_model(paths.teacher)
    assert info["meta"]["source"] == "train" and info["arch"] == "SongUNet"
    assert info["meta"]["fingerprint"]["stage"] == "teacher" and info["meta"]["fingerprint"]["inputs"] == {}
    assert (paths.teacher_dir / "samples.png").stat().st_size > 0
    assert yaml.safe_load((paths.teacher_dir / "config.yaml").read_text())["teacher"]["steps"] == 30

    for shard in ("0", "1"):
        result = rfpp(tmp_path, "pairs", "--profile", str(profile), "--shard", shard, "--num-shards", "2",
                      "--no-progress")
        assert result.returncode == 0, result.stderr
    result = rfpp(tmp_path, "pairs", "--profile", str(profile), "--finalize")
    assert result.returncode == 0, result.stderr
    data = PairDataset(paths.pairs_manifest)
    assert len(data) == 40
    assert data.manifest["sampler"] == {"name": "rf_heun", "steps": 3, "nfe": 3, "dtype": "float32"}
    assert data.manifest["teacher"]["source"] == "train"
    assert data.manifest["version"] == 2 and data.manifest["fingerprint"]["format"] == "rfpp.pairs/2"
    assert data.manifest["fingerprint"]["inputs"] == {"teacher": info["tensors_sha256"]}
    assert data.manifest["fingerprint"]["settings"]["pairs"]["seed"] == 5

    result = rfpp(tmp_path, "pairs", "--profile", str(profile), "--shard", "2", "--num-shards", "2")
    assert result.returncode == 2 and "out of range" in result.stderr


def test_missing_teacher_is_a_clear_error(tmp_path):
    profile = write_profile(tmp_path)
    result = rfpp(tmp_path, "pairs", "--profile", str(profile), "--shard", "0")
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "teacher.pt" in result.stderr


def test_edm_snapshot_teacher_from_local_http_server(tmp_path, monkeypatch):
    net = randomize_(SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=16,
                              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0), seed=3)
    sentinel = tmp_path / "executed"
    snapshot = write_snapshot(tmp_path / "snap.pkl", precond_stand_in(net), sentinel)
    monkeypatch.chdir(tmp_path)
    with LocalFileServer({"/edm/snap.pkl": snapshot.read_bytes()}) as server:
        config = load_config(str(write_profile(tmp_path, teacher={"source": server.url("/edm/snap.pkl")})))
        path = run_teacher_stage(config, ProfilePaths.of("tiny", tmp_path / "results"), progress=False)
    assert not sentinel.exists()
    velocity, info = load_model(path)
    assert info["meta"]["source"].endswith("snap.pkl") and len(info["meta"]["sha256"]) == 64
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 2.0])
    from rfpp.nets import EDMDenoiser

    with torch.no_grad():
        assert torch.allclose(velocity.denoiser(x, sigma), EDMDenoiser(net.eval())(x, sigma), atol=1e-6)


def test_teacher_arch_mismatch_is_refused(tmp_path, monkeypatch):
    net = randomize_(SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0))
    snapshot = write_snapshot(tmp_path / "snap.pkl", precond_stand_in(net), tmp_path / "executed")
    monkeypatch.chdir(tmp_path)
    config = load_config(str(write_profile(tmp_path, teacher={"source": str(snapshot), "arch": "DhariwalUNet"})))
    with pytest.raises(TeacherLoadError, match="holds a SongUNet, but the profile says teacher.arch: DhariwalUNet"):
        run_teacher_stage(config, ProfilePaths.of("tiny", tmp_path / "results"), progress=False)


def test_teacher_preview_grid_size_and_nfe_come_from_the_profile(tmp_path, monkeypatch):
    """teacher.grid / teacher.grid_nfe set the preview teacher/samples.png (64 samples at 15 NFE by default: far
    too much for a real EDM network on a CPU)."""
    from PIL import Image

    from rfpp.images import save_grid
    from rfpp.sampling import sample
    from rfpp.teachers import stage

    net = randomize_(SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0))
    snapshot = write_snapshot(tmp_path / "snap.pkl", precond_stand_in(net), tmp_path / "executed")
    monkeypatch.chdir(tmp_path)
    calls = []

    def spy(velocity, noise, **kwargs):  # records what the stage asks of the real sampler
        calls.append((noise.shape[0], kwargs["nfe"], kwargs["solver"]))
        return sample(velocity, noise, **kwargs)

    monkeypatch.setattr(stage, "sample", spy)
    config = load_config(str(write_profile(tmp_path, teacher={"source": str(snapshot), "grid": 4, "grid_nfe": 2})))
    path = run_teacher_stage(config, ProfilePaths.of("tiny", tmp_path / "results"), progress=False)
    assert calls == [(4, 3, "heun")]  # Heun needs an odd NFE: 2 -> 3
    expected = save_grid(torch.zeros(4, 1, 8, 8), tmp_path / "four.png", scale=8)
    with Image.open(path.parent / "samples.png") as got, Image.open(expected) as want:
        assert got.size == want.size
    assert load_config("cifar10").teacher.grid == 64 and load_config("cifar10").teacher.grid_nfe == 15
