"""Provenance of the teacher, features and pairs stages (issue 11), through the real `rfpp` CLI on the digits
profile: a chunk, shard or teacher made with other settings is never reused, the manifest never describes data
it does not hold, a shard has one writer at a time, and a NaN teacher stops pair generation where it arises."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_teacher_pairs_stages import rfpp, rfpp_env

from rfpp.checkpoints import CheckpointError, load_model, save_model
from rfpp.config import load_config
from rfpp.nets import SongUNet
from rfpp.pairs import PairDataset, PairSpec, shard_files
from rfpp.paths import ProfilePaths

SMALL = ("--no-progress", "pairs.count=256", "pairs.batch=32", "pairs.num_shards=2")  # 4 chunks per shard
SLOW = "pairs.steps=31"  # about half a second per chunk on a CPU core: a kill lands mid-shard


def digits_teacher(nan: bool = False) -> SongUNet:
    """The digits profile's teacher network with random weights (one NaN weight when `nan`)."""
    torch.manual_seed(0)
    net = SongUNet(**load_config("digits").teacher.net)
    with torch.no_grad():
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.1)
        if nan:
            next(p for p in net.parameters() if p.ndim == 4).view(-1)[0] = float("nan")
    return net


def workdir(root: Path, nan: bool = False) -> ProfilePaths:
    """results/digits/ under `root` with a teacher.pt written by rfpp (so validly sealed)."""
    paths = ProfilePaths.of("digits", root / "results")
    save_model(paths.teacher, digits_teacher(nan))
    return paths


def start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=cwd, env=rfpp_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def stop_after_first_chunk(paths: ProfilePaths, proc: subprocess.Popen, sig: int, timeout: float = 300) -> None:
    """Send `sig` to `proc` as soon as shard 0 has a finished chunk."""
    parts = shard_files(paths.pairs_dir, 0)["parts"]
    deadline = time.time() + timeout
    while not list(parts.glob("chunk-*.npz")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no chunk was written"
        time.sleep(0.01)
    os.killpg(proc.pid, sig)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def arrays(paths: ProfilePaths, shard: int) -> dict[str, bytes]:
    return {key: shard_files(paths.pairs_dir, shard)[key].read_bytes() for key in ("images", "labels")}


@pytest.mark.parametrize(("change", "named"), [("pairs.seed=7", "pairs.seed=1 (recorded) vs 7 (now)"),
                                               ("pairs.steps=3", "pairs.steps=31 (recorded) vs 3 (now)")])
def test_killed_shard_rerun_with_other_settings_uses_no_old_chunk(tmp_path, change, named):
    paths = workdir(tmp_path / "run")
    proc = start(paths.root.parents[1], "pairs", "--shard", "0", *SMALL, SLOW)
    stop_after_first_chunk(paths, proc, signal.SIGKILL)
    proc.communicate()
    files = shard_files(paths.pairs_dir, 0)
    chunks = sorted(files["parts"].glob("chunk-*.npz"))
    assert 1 <= len(chunks) < 4 and not files["record"].exists(), "the kill must land mid-shard"
    with np.load(files["parts"] / "chunk-0.npz") as old:
        old_images = old["images"].copy()

    again = rfpp(paths.root.parents[1], "pairs", "--shard", "0", *SMALL, SLOW, change)
    assert again.returncode == 0, again.stderr
    assert named in again.stdout and "making them again" in again.stdout

    clean = workdir(tmp_path / "clean")
    result = rfpp(clean.root.parents[1], "pairs", "--shard", "0", *SMALL, SLOW, change)
    assert result.returncode == 0, result.stderr
    assert arrays(paths, 0) == arrays(clean, 0)
    assert not np.array_equal(np.load(files["images"])[:32], old_images)  # the old chunk would have shown
    record = json.loads(files["record"].read_text())
    assert record["fingerprint"] == json.loads(shard_files(clean.pairs_dir, 0)["record"].read_text())["fingerprint"]


def test_other_steps_over_a_finished_set_remake_every_shard_and_the_manifest(tmp_path):
    paths = workdir(tmp_path / "run")
    cwd = paths.root.parents[1]
    assert rfpp(cwd, "pairs", *SMALL).returncode == 0  # pairs.steps: 11, the profile's
    old = [arrays(paths, k) for k in range(2)]

    result = rfpp(cwd, "pairs", *SMALL, "pairs.steps=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("pairs.steps=11 (recorded) vs 3 (now)") == 2
    manifest = json.loads(paths.pairs_manifest.read_text())
    assert manifest["sampler"]["steps"] == 3 and manifest["fingerprint"]["settings"]["pairs"]["steps"] == 3
    assert manifest["fingerprint"]["inputs"]["teacher"] == load_model(paths.teacher)[1]["tensors_sha256"]
    clean = workdir(tmp_path / "clean")
    assert rfpp(clean.root.parents[1], "pairs", *SMALL, "pairs.steps=3").returncode == 0
    assert [arrays(paths, k) for k in range(2)] == [arrays(clean, k) for k in range(2)] != old
    assert len(PairDataset(paths.pairs_manifest)) == 256

    def stamps() -> list[int]:
        files = [shard_files(paths.pairs_dir, k)[key] for k in range(2) for key in ("images", "record")]
        return [path.stat().st_mtime_ns for path in [*files, paths.pairs_manifest]]

    before = stamps()
    unchanged = rfpp(cwd, "pairs", *SMALL, "pairs.steps=3")  # the same settings redo nothing
    assert unchanged.returncode == 0 and "out of date" not in unchanged.stdout
    assert stamps() == before

    # one shard remade with other settings: the manifest that listed the old one is gone, and finalize refuses
    assert rfpp(cwd, "pairs", "--shard", "0", *SMALL, "pairs.steps=5").returncode == 0
    assert not paths.pairs_manifest.exists()
    refused = rfpp(cwd, "pairs", "--finalize", *SMALL, "pairs.steps=5")
    assert refused.returncode == 1 and not paths.pairs_manifest.exists()
    assert "shard 1" in refused.stderr and "pairs.steps=3 (recorded) vs 5 (now)" in refused.stderr
    assert "rfpp pairs --shard 1 --num-shards 2" in refused.stderr


def test_a_shard_and_the_manifest_have_one_writer_at_a_time(tmp_path):
    """A writer of shard 0 frozen (SIGSTOP) mid-shard: another `rfpp pairs --shard 0` and `--finalize` fail at once
    (they would wait for ever otherwise), naming its pid."""
    paths = workdir(tmp_path)
    first = start(tmp_path, "pairs", "--shard", "0", *SMALL, SLOW)
    try:
        stop_after_first_chunk(paths, first, signal.SIGSTOP)
        assert not shard_files(paths.pairs_dir, 0)["record"].exists()
        for args in (("--shard", "0"), ("--finalize",)):
            second = rfpp(tmp_path, "pairs", *args, *SMALL, SLOW)
            assert second.returncode == 1 and f"pid {first.pid}" in second.stderr, second.stderr
            assert "being written by another process" in second.stderr
    finally:
        kill(first)
    assert not shard_files(paths.pairs_dir, 0)["record"].exists()  # the second wrote nothing either


def test_a_nan_teacher_stops_pair_generation_naming_the_teacher(tmp_path):
    paths = workdir(tmp_path, nan=True)
    load_model(paths.teacher)  # a validly sealed file: the weights are what was saved
    result = rfpp(tmp_path, "pairs", *SMALL)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and str(Path("results/digits/teacher/teacher.pt")) in message
    assert "pair(s) 0, 1, 2" in message and "remake the teacher" in message
    assert not list(paths.pairs_dir.glob("shard-*.json")) and not list(paths.pairs_dir.glob("shard-*.npy"))


def test_pairs_batch_is_named_not_chunk(tmp_path):
    result = rfpp(tmp_path, "pairs", "pairs.batch=0")
    assert result.returncode == 2 and "pairs.batch" in result.stderr and "chunk" not in result.stderr
    with pytest.raises(ValueError, match=r"^pairs\.batch must be at least 1, got 0$"):
        PairSpec(count=8, num_shards=1, chunk=0, seed=0, shape=(1, 8, 8))


TEACHER = ("--no-progress", "teacher.batch=16", "teacher.grid=4", "teacher.grid_nfe=3")


def test_teacher_is_kept_only_with_the_same_fingerprint(tmp_path):
    paths = ProfilePaths.of("digits", tmp_path / "results")
    assert rfpp(tmp_path, "teacher", *TEACHER, "teacher.steps=2").returncode == 0
    recorded = load_model(paths.teacher)[1]["meta"]["fingerprint"]
    assert recorded["stage"] == "teacher" and recorded["settings"]["teacher"]["steps"] == 2
    before = paths.teacher.read_bytes(), paths.teacher.stat().st_mtime_ns

    same = rfpp(tmp_path, "teacher", *TEACHER, "teacher.steps=2")
    assert same.returncode == 0 and "up to date" in same.stdout
    assert (paths.teacher.read_bytes(), paths.teacher.stat().st_mtime_ns) == before

    other = rfpp(tmp_path, "teacher", *TEACHER, "teacher.steps=3")
    assert other.returncode == 0, other.stderr
    assert "teacher.steps=2 (recorded) vs 3 (now)" in other.stdout
    assert load_model(paths.teacher)[1]["meta"]["fingerprint"]["settings"]["teacher"]["steps"] == 3
    assert paths.teacher.read_bytes() != before[0]


def test_teacher_with_non_finite_preview_is_not_written(tmp_path):
    source = tmp_path / "nan-teacher.pt"
    torch.save(digits_teacher(nan=True).state_dict(), source)
    result = rfpp(tmp_path, "teacher", *TEACHER, f"teacher.source={source}")
    assert result.returncode == 1 and "non-finite preview samples" in result.stderr
    assert not ProfilePaths.of("digits", tmp_path / "results").teacher.exists()


def test_features_file_records_its_fingerprint_and_a_flipped_byte_is_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app
    from rfpp.eval.digits_classifier import load_feature_net, read_feature_net_file

    out = tmp_path / "classifier.pt"
    args = ["features", "--min-accuracy", "0", "--out", str(out)]
    made = CliRunner().invoke(app, [*args, "--steps", "5"])
    assert made.exit_code == 0, made.output
    fp = read_feature_net_file(out)["fingerprint"]
    assert fp["stage"] == "features" and fp["settings"]["features"] == {"seed": 0}
    assert fp["settings"]["eval.feature_steps"] == 5  # --steps sets eval.feature_steps
    stamp = out.stat().st_mtime_ns
    kept = CliRunner().invoke(app, [*args, "--steps", "5"])
    assert kept.exit_code == 0 and "up to date" in kept.output and out.stat().st_mtime_ns == stamp
    remade = CliRunner().invoke(app, [*args, "--steps", "6"])
    assert remade.exit_code == 0 and "eval.feature_steps=5 (recorded) vs 6 (now)" in remade.output

    with zipfile.ZipFile(out) as archive:  # the largest tensor's bytes inside the (uncompressed) archive
        entry = max(archive.infolist(), key=lambda e: e.file_size)
    raw = bytearray(out.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    raw[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x01
    out.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is corrupted: its weights hash to") as err:
        load_feature_net(out)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.slow
def test_snakemake_killed_mid_shard_then_rerun_incomplete_after_a_profile_edit_uses_no_old_row(tmp_path):
    """snakemake killed (-9) while a shard is half made, the profile's pairs.seed edited, `--rerun-incomplete`: the
    shard holds exactly what a clean run with the new seed makes (before, the old chunks in shard-0.parts/, which are
    no declared output, were reused under the new seed's name)."""
    import yaml
    from test_workflow import tiny_profile
    from workflow_helpers import SNAKEMAKE, env, make_workspace, run

    profile = tiny_profile()
    profile["pairs"].update(count=256, batch=32, num_shards=1, steps=31)
    work = make_workspace(tmp_path, {"tiny": profile})
    paths = ProfilePaths.of("tiny", work / "results")
    target = "results/tiny/pairs/manifest.json"
    run([SNAKEMAKE, "results/tiny/teacher/teacher.pt", "--cores", "1", "--config", "profile=tiny"], cwd=work)
    smk = subprocess.Popen([SNAKEMAKE, target, "--cores", "1", "--config", "profile=tiny"], cwd=work,
                           env=env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    parts = shard_files(paths.pairs_dir, 0)["parts"]
    try:
        deadline = time.time() + 300
        while not list(parts.glob("chunk-*.npz")):
            assert smk.poll() is None and time.time() < deadline, "no chunk was written"
            time.sleep(0.01)
    finally:
        os.kill(smk.pid, signal.SIGKILL)  # Snakemake alone: its job dies with it (rfpp.lifeline)
        smk.wait(timeout=60)
    time.sleep(2)  # the orphaned `rfpp pairs` notices within half a second (rfpp.lifeline)
    done = len(list(parts.glob("chunk-*.npz")))
    assert 1 <= done < 8 and not shard_files(paths.pairs_dir, 0)["record"].exists()

    profile["pairs"]["seed"] = 7
    (work / "params" / "tiny.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    run([SNAKEMAKE, target, "--unlock", "--config", "profile=tiny"], cwd=work)  # Snakemake's own lock outlives -9
    log = run([SNAKEMAKE, target, "--cores", "1", "--rerun-incomplete", "--config", "profile=tiny"], cwd=work,
              OMP_NUM_THREADS="1")
    assert "pairs.seed=1 (recorded) vs 7 (now)" in log
    made = arrays(paths, 0)

    clean = ProfilePaths.of("tiny", tmp_path / "clean" / "results")
    clean.teacher_dir.mkdir(parents=True)
    clean.teacher.write_bytes(paths.teacher.read_bytes())
    (tmp_path / "clean" / "tiny.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    assert rfpp(tmp_path / "clean", "pairs", "--profile", "tiny.yaml", "--no-progress").returncode == 0
    assert made == arrays(clean, 0)
    assert json.loads(paths.pairs_manifest.read_text())["spec"]["seed"] == 7
