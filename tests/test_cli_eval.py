"""End to end through the CLI on tiny checkpoints: sample (formats, shards, grids, schedules), invert, translate,
features, fid, report, and the error cases (wrong path, another architecture, unknown option or override key)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli.main import app
from rfpp.checkpoints import save_model
from rfpp.nets import SongUNet

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1], num_blocks=1,
            attn_resolutions=[], dropout=0.0)
OVERRIDES = ["teacher.net.model_channels=8", "teacher.net.channel_mult=[1]", "train.seeds=[0]"]
COND = ["teacher.net.label_dim=3"]



def _net(label_dim: int = 0, seed: int = 0, **changes) -> SongUNet:
    torch.manual_seed(seed)
    return SongUNet(label_dim=label_dim, **{**TINY, **changes})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A results/ tree with a tiny unconditional student for arm 'rfpp' and a conditional one for 'cond'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RFPP_TRACKING", "off")
    save_model("results/digits/train/rfpp/seed0/final.pt", _net(), meta={"steps": 7, "weights": "ema", "ema": 0.99})
    save_model("cond.pt", _net(label_dim=3))
    save_model("wide.pt", _net(model_channels=16))
    return tmp_path


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def _out(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_sample_npz_grid_and_meta(workdir):
    r = run("sample", "--nfe", "2", "--arm", "rfpp", "--num-samples", "20", "--batch", "8", *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    npz = workdir / "results/digits/samples/rfpp/seed0/nfe2.npz"
    with np.load(npz, allow_pickle=False) as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape == (20, 1, 8, 8)
        assert (data["labels"] == -1).all() and list(data["indices"]) == list(range(20))
        meta = json.loads(str(data["meta"]))
    assert meta["nfe"] == 2 and meta["solver"] == "euler" and meta["update"] == "new"
    assert meta["checkpoint_step"] == 7 and meta["ema"] is True and meta["straightness"] >= 0
    assert npz.with_suffix(".png").exists() and npz.with_suffix(".json").exists()
    assert meta["t_start"] == 0.99  # the digits profile's first grid point (sample.t_start)


def test_sample_t_start_moves_the_first_grid_point(workdir):
    base = ["sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "6", *OVERRIDES]
    assert run(*base, "--out", "ref.npz").exit_code == 0  # the profile's t₀
    r = run(*base, "--out", "cli.npz", "--t-start", "0.99999")
    assert r.exit_code == 0, _out(r)
    r = run(*base, "--out", "cfg.npz", "sample.t_start=0.99999")
    assert r.exit_code == 0, _out(r)
    with np.load("ref.npz") as a, np.load("cli.npz") as b, np.load("cfg.npz") as c:
        assert json.loads(str(a["meta"]))["t_start"] == 0.99
        assert json.loads(str(b["meta"]))["t_start"] == json.loads(str(c["meta"]))["t_start"] == 0.99999
        assert np.array_equal(b["images"], c["images"]) and not np.array_equal(a["images"], b["images"])
    r = run(*base, "--out", "bad.npz", "--t-start", "1")
    assert r.exit_code == 2 and "sample.t_start" in r.stderr and "(0, 1)" in r.stderr
    assert "--t-start (sample.t_start)" in r.stderr
    r = run("sample", "--nfe", "2", "--arm", "rfpp", "--t-start", "0.4", *OVERRIDES)
    assert r.exit_code == 2 and "second point 0.5" in _out(r)
    r = run(*base, "sample.t_start=1.5")
    assert r.exit_code == 2 and "sample.t_start" in _out(r)


def test_shards_merge_to_the_single_run(workdir):
    base = ["sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "10", *OVERRIDES]
    assert run(*base, "--out", "single.npz").exit_code == 0
    for i in range(3):
        r = run(*base, "--out", "merged.npz", "--shard", str(i), "--num-shards", "3", "--batch", "3")
        assert r.exit_code == 0, _out(r)
    r = run(*base, "--out", "merged.npz", "--num-shards", "3", "--merge")
    assert r.exit_code == 0, _out(r)
    with np.load("single.npz") as a, np.load("merged.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["indices"], b["indices"])
    Path("merged.shard-1-of-3.npz").unlink()
    r = run(*base, "--out", "merged.npz", "--num-shards", "3", "--merge")
    assert r.exit_code == 1 and "missing" in _out(r)


def test_png_and_zip_formats_schedule_and_heun(workdir):
    r = run("sample", "--arm", "rfpp", "--num-samples", "5", "--format", "png", "--schedule", "0.99999,0.6,0.2",
            *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    assert len(list((workdir / "results/digits/samples/rfpp/seed0/nfe3").glob("*.png"))) == 5
    r = run("sample", "--nfe", "3", "--solver", "heun", "--arm", "rfpp", "--num-samples", "4", "--format", "zip",
            *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    assert (workdir / "results/digits/samples/rfpp/seed0/nfe3.zip").exists()
    r = run("sample", "--nfe", "2", "--solver", "heun", "--arm", "rfpp", "--num-samples", "4", *OVERRIDES)
    assert r.exit_code == 2 and "odd" in _out(r)  # --nfe and --solver are sample.* overrides: the config says no
    assert "--nfe (sample.nfe)" in r.stderr and "--solver" not in r.stderr  # the message names the keys it checks


def test_class_labels_given_or_uniform(workdir):
    r = run("sample", "--nfe", "1", "--checkpoint", "cond.pt", "--num-samples", "6", "--class-labels", "2,0",
            "--out", "c.npz", *OVERRIDES, *COND)
    assert r.exit_code == 0, _out(r)
    with np.load("c.npz") as data:
        assert list(data["labels"]) == [2, 0, 2, 0, 2, 0]
    r = run("sample", "--nfe", "1", "--checkpoint", "cond.pt", "--num-samples", "30", "--out", "u.npz",
            *OVERRIDES, *COND)
    with np.load("u.npz") as data:
        assert set(data["labels"]) == {0, 1, 2}
    r = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "2", "--class-labels", "1", *OVERRIDES)
    assert r.exit_code == 1 and "unconditional" in _out(r)


def test_invert_and_translate(workdir):
    r = run("invert", "--arm", "rfpp", "--num-images", "4", "--nfe", "3", "--decode-nfe", "2", "--out", "inv.png",
            *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    assert Path("inv.png").exists()
    with np.load("inv.npz") as data:
        assert data["noise"].shape == (4, 1, 8, 8) and data["decoded"].dtype == np.uint8
        assert float(data["t_start"]) == 0.99  # decoding starts where the profile's sampling does
        noise, decoded = data["noise"], data["decoded"]
    r = run("invert", "--arm", "rfpp", "--num-images", "4", "--nfe", "3", "--decode-nfe", "2", "--out", "ref.png",
            "sample.t_start=0.99999", *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    with np.load("ref.npz") as data:
        assert float(data["t_start"]) == 0.99999
        assert np.array_equal(data["noise"], noise) and not np.array_equal(data["decoded"], decoded)
    r = run("translate", "--checkpoint", "cond.pt", "--target-class", "2", "--indices", "0,1,2", "--out", "tr.png",
            *OVERRIDES, *COND)
    assert r.exit_code == 0, _out(r)
    with np.load("tr.npz") as data:
        assert list(data["source_labels"]) == [0, 1, 2] and list(data["target_labels"]) == [2, 2, 2]
    r = run("translate", "--arm", "rfpp", "--target-class", "2", *OVERRIDES)
    assert r.exit_code == 1 and "unconditional" in _out(r)


def test_errors_have_messages_and_exit_codes(workdir):
    r = run("sample", "--nfe", "1", "--checkpoint", "nope.pt", *OVERRIDES)
    assert r.exit_code == 1 and "does not exist" in _out(r)
    r = run("sample", "--nfe", "1", "--checkpoint", "wide.pt", *OVERRIDES)
    assert r.exit_code == 1 and "another configuration" in _out(r) and "model_channels" in _out(r)
    Path("trunc.pt").write_bytes(Path("wide.pt").read_bytes()[:500])
    r = run("sample", "--nfe", "1", "--checkpoint", "trunc.pt", *OVERRIDES)
    assert r.exit_code == 1 and "truncated" in _out(r)
    r = run("sample", "--nfe", "1", "--no-such-option", *OVERRIDES)
    assert r.exit_code == 2
    r = run("sample", "--nfe", "1", "sample.no_such_key=3")
    assert r.exit_code == 2 and "unknown config key" in _out(r)
    r = run("fid", "--arm", "rfpp", "--nfe", "2", *OVERRIDES)
    assert r.exit_code == 1 and "rfpp features" in _out(r)
    r = run("sample", "--dry-run", "sample.solver=heun", "sample.nfe=[1,3]")
    assert r.exit_code == 0 and "solver: heun" in r.output
    r = run("sample", "--dry-run", "sample.solver=rk4")
    assert r.exit_code == 2 and "sample.solver" in _out(r)


def test_features_fid_sweep_and_report(workdir):
    r = run("features", "--steps", "60", "--min-accuracy", "0")
    assert r.exit_code == 0, _out(r)
    assert (workdir / "results/digits/features/classifier.pt").exists()
    r = run("sample", "--arm", "rfpp", "--num-samples", "40", *OVERRIDES)  # the sweep: NFE 1 and 2
    assert r.exit_code == 0, _out(r)
    r = run("fid", "--arm", "rfpp", "eval.num_samples=40", *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    assert "digits-classifier features stand in for Inception" in r.output
    result = json.loads((workdir / "results/digits/fid/rfpp-seed0-nfe2.json").read_text())
    assert result["protocol"]["num_samples"] == 40 and result["sampling"]["nfe"] == 2
    assert result["sampling"]["checkpoint_step"] == 7 and result["sampling"]["ema"] is True
    assert result["protocol"]["feature_net"] == "digits-classifier" and result["straightness"] is not None
    assert (workdir / "results/digits/fid/rfpp-seed0-nfe1.json").exists()
    r = run("fid", "--skip-missing", "eval.num_samples=40", *OVERRIDES)  # 'baseline' has no samples
    assert r.exit_code == 0 and "skipping baseline" in r.output
    r = run("report", *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    text = (workdir / "results/digits/report.md").read_text()
    assert "| rfpp | 2 |" in text and "digits-classifier features stand in for Inception" in text
    for name in ("fid_vs_nfe.png", "timestep_density.png", "samples_rfpp_nfe2.png"):
        assert (workdir / "results/digits/report" / name).stat().st_size > 0


def test_an_option_that_stands_for_a_profile_key_is_that_override(workdir):
    """`--solver heun` is `sample.solver=heun`, placed after the positional overrides (the option wins) and checked
    by the configuration once, with its message naming the option; `--device` is `device`."""
    r = run("sample", "--dry-run", "--solver", "heun", "--nfe", "3", "--t-start", "0.999", "--seed", "4",
            "--schedule", "0.9,0.5", "--format", "zip", "--device", "cpu", "sample.solver=euler", "sample.seed=1")
    assert r.exit_code == 0, _out(r)
    shown = yaml.safe_load(r.output)
    assert shown["device"] == "cpu" and {k: shown["sample"][k] for k in ("solver", "nfe", "t_start", "seed",
                                                                         "schedule", "format")} == {
        "solver": "heun", "nfe": [3], "t_start": 0.999, "seed": 4, "schedule": [0.9, 0.5], "format": "zip"}
    r = run("sample", "--nfe", "1", "--arm", "rfpp", "--format", "gif", *OVERRIDES)
    assert r.exit_code == 2 and "sample.format" in r.stderr and "--format (sample.format)" in r.stderr
    r = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "0", *OVERRIDES)
    assert r.exit_code == 2 and "--num-samples (sample.num_samples)" in r.stderr
    r = run("invert", "--arm", "rfpp", "--nfe", "3", "--decode-nfe", "2", "--solver", "heun", *OVERRIDES)
    assert r.exit_code == 2 and "odd" in r.stderr and "--decode-nfe (sample.nfe)" in r.stderr
    r = run("fid", "--dry-run", "--isc", "--inception-weights", "w.pth", "--device", "cpu")
    shown = yaml.safe_load(r.output)
    assert shown["eval"]["isc"] is True and shown["eval"]["inception_weights"] == "w.pth" and shown["device"] == "cpu"
    if not torch.cuda.is_available():
        r = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "2", "--device", "cuda:1", *OVERRIDES)
        assert r.exit_code == 2 and "CUDA is not available" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_subprocess_exit_codes_and_help(workdir):
    env_cmd = [sys.executable, "-m", "cli.main"]
    env = {"PYTHONPATH": str(ROOT), "RFPP_TRACKING": "off", "PATH": "/usr/bin:/bin"}
    helped = subprocess.run([*env_cmd, "sample", "--help"], capture_output=True, text=True, env=env, cwd=workdir)
    assert helped.returncode == 0 and "--num-shards" in helped.stdout and "--schedule" in helped.stdout
    flat = " ".join(helped.stdout.replace("│", " ").split())
    for key in ("sample.solver", "sample.t_start", "sample.seed", "sample.format", "sample.num_samples", "device"):
        assert f"Sets {key}" in flat  # each option that stands for a profile key names it
    wrong = subprocess.run([*env_cmd, "sample", "--nfe", "1", "--checkpoint", "nope.pt"], capture_output=True,
                           text=True, env=env, cwd=workdir)
    assert wrong.returncode == 1 and "does not exist" in wrong.stderr
    unknown = subprocess.run([*env_cmd, "fid", "--bogus"], capture_output=True, text=True, env=env, cwd=workdir)
    assert unknown.returncode == 2 and "bogus" in unknown.stderr
