"""The evaluation stages as library functions (rfpp.eval.stage, rfpp.eval.features_stage), called without the CLI:
what `rfpp sample --t-start … --seed …` writes is what `run_sample` writes for the same overrides, the features stage
keeps or remakes its file by fingerprint, and the library's errors are its own (no exit codes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from rfpp.checkpoints import save_model
from rfpp.config import ConfigError, load_config
from rfpp.eval.features_stage import FeatureNetError, run_features
from rfpp.eval.stage import NotWritableError, run_report, run_sample
from rfpp.nets import SongUNet
from rfpp.paths import ProfilePaths

TINY = dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1], num_blocks=1,
            attn_resolutions=[], dropout=0.0)
OVERRIDES = ["teacher.net.model_channels=8", "teacher.net.channel_mult=[1]", "train.seeds=[0]"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RFPP_TRACKING", "off")
    torch.manual_seed(0)
    save_model(ProfilePaths.of("digits").student("rfpp", 0), SongUNet(label_dim=0, **TINY), meta={"steps": 3})
    return tmp_path


def test_run_sample_writes_what_the_command_with_shorthands_writes(workdir):
    r = CliRunner().invoke(app, ["sample", "--arm", "rfpp", "--nfe", "2", "--t-start", "0.9", "--seed", "3",
                                 "--num-samples", "6", "--batch", "4", "--out", "cli.npz", *OVERRIDES])
    assert r.exit_code == 0, r.output
    config = load_config("digits", [*OVERRIDES, "sample.nfe=[2]", "sample.t_start=0.9", "sample.seed=3",
                                    "sample.num_samples=6", "sample.batch=4"])
    said: list[str] = []
    written = run_sample(config, arm="rfpp", out="lib.npz", progress=False, log=said.append)
    assert [str(w["samples"]) for w in written] == ["lib.npz"] and said[0].startswith("rfpp seed 0: 6 samples at NFE 2")
    with np.load("cli.npz") as a, np.load("lib.npz") as b:
        assert np.array_equal(a["images"], b["images"])
        meta_a, meta_b = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
    assert meta_a["fingerprint"] == meta_b["fingerprint"] and meta_b["t_start"] == 0.9 and meta_b["seed"] == 3
    with pytest.raises(ConfigError, match="unknown arm 'nope'"):
        run_sample(config, arm="nope")
    with pytest.raises(ConfigError, match="--out needs a single arm"):
        run_sample(load_config("digits", OVERRIDES), arm="rfpp", out="x.npz")  # the sweep: NFE 1 and 2


def test_run_features_keeps_a_file_of_the_same_fingerprint_and_remakes_another(workdir):
    config = load_config("digits", ["eval.feature_steps=20"])
    said: list[str] = []
    first = run_features(config, out="f.pt", min_accuracy=0, progress=False, log=said.append)
    made = (workdir / "f.pt").read_bytes()
    assert first["path"] == "f.pt" and not any("up to date" in line for line in said)
    said.clear()
    assert run_features(config, out="f.pt", min_accuracy=0, progress=False, log=said.append)["accuracy"] \
        == first["accuracy"]
    assert said[0] == "feature network f.pt is up to date (made with these settings); keeping it"
    assert (workdir / "f.pt").read_bytes() == made
    said.clear()
    with pytest.raises(FeatureNetError, match="below --min-accuracy"):
        run_features(load_config("digits", ["eval.feature_steps=21"]), out="f.pt", min_accuracy=1.01, progress=False,
                     log=said.append)
    assert said[0].startswith("feature network f.pt is out of date (eval.feature_steps=20 (recorded) vs 21 (now))")


def test_run_report_finds_an_unwritable_folder_before_the_work(workdir):
    (workdir / "blocker").write_text("a file")
    with pytest.raises(NotWritableError, match="blocker is a file, not a directory"):
        run_report(load_config("digits"), out="blocker/report.md")
