"""Pair generation: regenerable noise, byte-identical shards across runs and splits, kill -9 and resume,
a verified reader that names missing or corrupted shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rfpp.nets import EDMDenoiser, SongUNet
from rfpp.pairs import (
    PairDataset,
    PairSetError,
    PairSpec,
    finalize,
    generate_shard,
    make_noise,
    noise_seed,
    shard_files,
    teacher_function,
)

SHAPE = (1, 8, 8)


def tiny_teacher(label_dim: int = 0) -> EDMDenoiser:
    torch.manual_seed(0)
    net = SongUNet(img_resolution=8, in_channels=1, out_channels=1, label_dim=label_dim, model_channels=16,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return EDMDenoiser(net).eval()


def make_set(out: Path, num_shards: int, count: int = 40, chunk: int = 8, label_dim: int = 0,
             sampler: str = "edm_heun") -> PairSpec:
    spec = PairSpec(count=count, num_shards=num_shards, chunk=chunk, seed=3, shape=SHAPE, label_dim=label_dim)
    fn = teacher_function(tiny_teacher(label_dim), sampler, steps=3)
    for k in range(num_shards):
        generate_shard(out, spec, k, fn, progress=False)
    finalize(out, spec, {"teacher": {"name": "tiny"}})
    return spec


def all_images(out: Path, spec: PairSpec) -> np.ndarray:
    return np.concatenate([np.load(shard_files(out, k)["images"]) for k in range(spec.num_shards)])


def test_noise_depends_only_on_seed_and_index():
    a = make_noise(5, [0, 1, 2, 3], SHAPE)
    b = make_noise(5, [2, 3], SHAPE)
    assert torch.equal(a[2:], b)
    assert not torch.equal(make_noise(6, [0], SHAPE), a[:1])
    assert len({noise_seed(5, i) for i in range(10_000)}) == 10_000
    assert abs(float(make_noise(1, range(200), (3, 8, 8)).std()) - 1) < 0.02


def test_same_seed_gives_identical_shards_across_runs_and_splits(tmp_path):
    spec2 = make_set(tmp_path / "a", num_shards=2)
    make_set(tmp_path / "b", num_shards=2)
    spec3 = make_set(tmp_path / "c", num_shards=3)
    for k in range(2):
        for key in ("images", "labels"):
            assert shard_files(tmp_path / "a", k)[key].read_bytes() == shard_files(tmp_path / "b", k)[key].read_bytes()
    assert np.array_equal(all_images(tmp_path / "a", spec2), all_images(tmp_path / "c", spec3))
    images = all_images(tmp_path / "a", spec2)
    assert images.shape == (40, *SHAPE) and images.dtype == np.uint8 and images.std() > 1


def test_shards_split_whole_chunks():
    spec = PairSpec(count=100, num_shards=3, chunk=16, seed=0, shape=SHAPE)
    ranges = [spec.shard_range(k) for k in range(3)]
    assert ranges[0].start == 0 and ranges[-1].stop == 100
    assert all(r.start % 16 == 0 for r in ranges)
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:], strict=False))
    with pytest.raises(ValueError, match="shard 3 is out of range"):
        spec.shard_range(3)


def test_reader_regenerates_noise_and_decodes_images(tmp_path):
    spec = make_set(tmp_path, num_shards=2, label_dim=4)
    data = PairDataset(tmp_path / "manifest.json")
    assert len(data) == 40
    noise, image, label = data[17]
    assert torch.equal(noise, make_noise(spec.seed, [17], SHAPE)[0])
    assert image.min() >= -1 and image.max() <= 1 and 0 <= label < 4
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["teacher"] == {"name": "tiny"} and len(manifest["shards"]) == 2
    assert manifest["versions"]["torch"] == torch.__version__


def test_rf_teacher_pairs(tmp_path):
    spec = make_set(tmp_path, num_shards=1, count=10, sampler="rf_heun")
    assert all_images(tmp_path, spec).shape == (10, *SHAPE)


def test_reader_names_missing_and_corrupted_shards(tmp_path):
    make_set(tmp_path, num_shards=2)
    files = shard_files(tmp_path, 1)
    raw = bytearray(files["images"].read_bytes())
    raw[-1] ^= 0xFF
    files["images"].write_bytes(bytes(raw))
    with pytest.raises(PairSetError, match="shard 1's file .* is corrupted"):
        PairDataset(tmp_path)
    files["images"].unlink()
    with pytest.raises(PairSetError, match="shard 1 is missing its file"):
        PairDataset(tmp_path)
    with pytest.raises(PairSetError, match="no pair manifest"):
        PairDataset(tmp_path / "nowhere")


def test_finalize_refuses_an_incomplete_set(tmp_path):
    spec = PairSpec(count=16, num_shards=2, chunk=8, seed=0, shape=SHAPE)
    generate_shard(tmp_path, spec, 0, teacher_function(tiny_teacher(), "edm_heun", 2), progress=False)
    with pytest.raises(PairSetError, match=r"shard\(s\) \[1\] are not finished"):
        finalize(tmp_path, spec)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_pairs import tiny_teacher, SHAPE
    from rfpp.pairs import PairSpec, generate_shard, teacher_function
    spec = PairSpec(count=48, num_shards=1, chunk=8, seed=3, shape=SHAPE)
    fn = teacher_function(tiny_teacher(), "edm_heun", steps=3)
    def slow(noise, labels):
        with open({log!r}, "a") as f:
            f.write("chunk\\n")
        time.sleep({delay})
        return fn(noise, labels)
    generate_shard({out!r}, spec, 0, slow, progress=False)
""")


def run_generation(out: Path, log: Path, delay: float) -> subprocess.Popen:
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), log=str(log), delay=delay, out=str(out))
    return subprocess.Popen([sys.executable, "-c", script], start_new_session=True)


def test_kill_minus_9_then_resume_redoes_only_unfinished_chunks(tmp_path):
    out, log = tmp_path / "pairs", tmp_path / "calls.log"
    proc = run_generation(out, log, delay=0.5)
    parts = shard_files(out, 0)["parts"]
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("chunk-*.npz"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(parts.glob("chunk-*.npz")))
    assert 2 <= finished < 6, "the kill must land mid-shard"
    assert not shard_files(out, 0)["record"].exists()
    calls_before = log.read_text().count("chunk")

    resumed = run_generation(out, log, delay=0.0)
    assert resumed.wait(timeout=300) == 0
    redone = log.read_text().count("chunk") - calls_before
    assert redone == 6 - finished

    reference = tmp_path / "ref"
    spec = PairSpec(count=48, num_shards=1, chunk=8, seed=3, shape=SHAPE)
    generate_shard(reference, spec, 0, teacher_function(tiny_teacher(), "edm_heun", 3), progress=False)
    for key in ("images", "labels"):
        assert shard_files(out, 0)[key].read_bytes() == shard_files(reference, 0)[key].read_bytes()
    assert not parts.exists()
