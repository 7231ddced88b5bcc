"""Provenance of the sample / fid / report stages (issue 11): a lock per sample set, the student's digest and a
fingerprint in every sample set, the grid checked before sampling, samples of another shape refused by `rfpp fid`,
stale FIDs found by `rfpp report`, an empty report refused, and an unwritable output found before the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import flip_tensor_bytes
from typer.testing import CliRunner

from cli.main import app
from rfpp.checkpoints import file_sha256, model_digest, save_model
from rfpp.data import DigitsDataset
from rfpp.eval import save_feature_net, train_classifier
from rfpp.eval.generate import lock_path
from rfpp.nets import SongUNet
from rfpp.paths import ProfilePaths
from rfpp.provenance import difference

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1], num_blocks=1,
            attn_resolutions=[], dropout=0.0)
OVERRIDES = ["teacher.net.model_channels=8", "teacher.net.channel_mult=[1]", "train.seeds=[0]"]
PATHS = ProfilePaths.of("digits")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A results/ tree with a tiny student for arm 'rfpp' (tracking off)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RFPP_TRACKING", "off")
    torch.manual_seed(0)
    save_model(PATHS.student("rfpp", 0), SongUNet(label_dim=0, **TINY), meta={"steps": 7, "weights": "ema"})
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def _out(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def _meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def test_a_sample_set_is_written_by_one_process_and_records_what_made_it(workdir):
    """A real `rfpp sample` holds samples/rfpp/.nfe1.lock while it samples: a second one on the same set fails at
    once naming its pid; after kill -9 the lock is gone with it. The sample meta records the student's verified
    tensor digest and a fingerprint of the SamplingSpec used."""
    target = PATHS.samples("rfpp", 0, 1)
    env = {**os.environ, "RFPP_TRACKING": "off", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = workdir / "first.log"
    with log.open("w") as handle:
        first = subprocess.Popen(["rfpp", "sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "2000000",
                                  "--batch", "500", *OVERRIDES], cwd=workdir, env=env, stdout=handle, stderr=handle)
    try:
        lock = lock_path(target)
        assert lock == Path("results/digits/samples/rfpp/seed0/.nfe1.lock")
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first sampler never took its lock"
            time.sleep(0.2)
        start = time.monotonic()
        second = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "4", *OVERRIDES)
        assert second.exit_code == 1, _out(second)
        assert f"pid {first.pid}" in _out(second) and "sampling" not in _out(second)
        assert time.monotonic() - start < 20 and not target.exists()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)

    third = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "4", *OVERRIDES)
    assert third.exit_code == 0, _out(third)
    meta = _meta(target)
    digest = model_digest(PATHS.student("rfpp", 0))
    assert meta["checkpoint_tensors_sha256"] == digest
    made_by = meta["fingerprint"]
    assert made_by["stage"] == "sample" and made_by["inputs"] == {"student": digest}
    assert {k: made_by["settings"][k] for k in ("nfe", "solver", "t_start", "seed", "num_samples")} == {
        "nfe": 1, "solver": "euler", "t_start": 0.99, "seed": 0, "num_samples": 4}
    again = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "4", "--seed", "5", *OVERRIDES)
    assert again.exit_code == 0, _out(again)
    assert difference(made_by, _meta(target)["fingerprint"]) == "seed=0 (recorded) vs 5 (now)"


def test_an_nfe_the_first_grid_point_cannot_serve_is_refused_before_sampling(workdir):
    r = run("sample", "--nfe", "1000", "--arm", "rfpp", "--num-samples", "2", *OVERRIDES)
    assert r.exit_code == 2, _out(r)
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1 and "second point 0.999" in message
    assert "--t-start (sample.t_start)" in message and "--nfe" in message
    assert "sampling" not in _out(r) and not PATHS.samples("rfpp", 0, 1000).exists()


def test_an_unwritable_sample_directory_is_found_before_sampling(workdir):
    blocker = workdir / "results/digits/samples"
    blocker.write_text("a regular file where the samples folder should be")
    r = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "4", *OVERRIDES)
    assert r.exit_code == 1, _out(r)
    assert f"{Path('results/digits/samples')} is a file, not a directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "sampling" not in _out(r)


@pytest.fixture
def features(workdir):
    """The digits feature network where `rfpp fid` looks for it (trained briefly: its numbers do not matter)."""
    ds = DigitsDataset(resolution=8)
    net, record = train_classifier(ds.images, torch.as_tensor(ds.labels), seed=0, steps=20)
    return save_feature_net(PATHS.features, net, record)


def test_fid_records_its_samples_and_the_report_finds_a_stale_fid(workdir, features):
    fid_args = ["fid", "--arm", "rfpp", "--nfe", "1", "eval.num_samples=40", *OVERRIDES]
    assert run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "40", *OVERRIDES).exit_code == 0
    r = run(*fid_args)
    assert r.exit_code == 0, _out(r)
    samples = PATHS.samples("rfpp", 0, 1)
    recorded = json.loads(PATHS.fid("rfpp", 0, 1).read_text())["samples"]
    assert recorded["sha256"] == file_sha256(samples)
    assert recorded["fingerprint"] == _meta(samples)["fingerprint"]["id"]
    r = run("report", *OVERRIDES)
    assert r.exit_code == 0, _out(r)

    r = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "40", "--seed", "3", *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    r = run("report", *OVERRIDES)
    assert r.exit_code == 1, _out(r)
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1 and "stale" in message and str(samples) in message
    assert "rfpp fid --profile digits --arm rfpp --train-seed 0 --nfe 1" in message
    text = PATHS.report.read_text()
    assert "(stale)" in text and "rfpp fid --profile digits --arm rfpp --train-seed 0 --nfe 1" in text
    assert run(*fid_args).exit_code == 0
    r = run("report", *OVERRIDES)
    assert r.exit_code == 0, _out(r)
    assert "(stale)" not in PATHS.report.read_text()


def test_fid_refuses_samples_of_another_shape_and_an_unwritable_result_folder(workdir, features):
    rgb = workdir / "rgb16.npz"
    np.savez(rgb, images=np.full((40, 3, 16, 16), 128, np.uint8), labels=np.full(40, -1))
    r = run("fid", "--samples", str(rgb), "--nfe", "1", "eval.num_samples=40", *OVERRIDES)
    assert r.exit_code == 1, _out(r)
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1 and "3x16x16" in message and "1x8x8" in message
    assert not PATHS.fid("rgb16", 0, 1).exists()

    assert run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "40", *OVERRIDES).exit_code == 0
    (workdir / "blocker").write_text("a file")
    r = run("fid", "--arm", "rfpp", "--nfe", "1", "--out", "blocker/fid.json", "eval.num_samples=40", *OVERRIDES)
    assert r.exit_code == 1, _out(r)
    assert "blocker is a file, not a directory" in r.stderr and "FID" not in r.stdout


def test_report_without_results_fails_naming_where_it_looked(workdir):
    r = run("report", *OVERRIDES)
    assert r.exit_code == 1, _out(r)
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1
    assert str((workdir / "results/digits").resolve()) in message and "rfpp sample" in message
    assert not PATHS.report.exists()


def test_a_student_with_flipped_tensor_bytes_is_refused_by_sample(workdir):
    """16 bytes flipped in the tensor data of final.pt: `rfpp sample` names the file and says to re-create it
    (before, it loaded the weights and sampled: FID 5.55 instead of 5.26 on digits)."""
    student = PATHS.student("rfpp", 0)
    flip_tensor_bytes(student, 16)
    result = run("sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "4", *OVERRIDES)
    assert result.exit_code == 1, _out(result)
    assert f"{student} is corrupted" in _out(result) and "re-create" in _out(result)
    assert not PATHS.samples("rfpp", 0, 1).exists()
