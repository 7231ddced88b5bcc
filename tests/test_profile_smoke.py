"""Smoke tests of the real profiles: the whole DAG of params/{cifar10,afhq64,ffhq64,imagenet64}.yaml through real
Snakemake on the CPU, with each profile's real teacher architecture and tiny counts.

teacher (download + conversion) → pairs shards → manifest → train every arm → sample at each NFE → FID → report.
Nothing is downloaded from the internet and nothing of rfpp is mocked:
- the teacher is a random-weight network in EDM's snapshot format with the architecture, resolution, channels,
  conditioning and preconditioning of the profile's released snapshot (tests/edm_snapshot_writer.py), served
  over HTTP from 127.0.0.1 under its real file name;
- the FID reference is an EDM-format .npz (mu, sigma) served by the same server;
- VGG16 (LPIPS) and Inception (FID) are random-weight files in a temporary TORCH_HOME (tests/weight_files.py).

ffhq64's DAG is afhq64's (same network, preconditioning and settings; only the data, the snapshot and the FID
reference differ, which its own test checks before making its teacher). ImageNet-64's DAG runs its ADM at a third of
the release's width (NARROWED); the release's own width is downloaded and converted by the teacher rule in a test of
its own. Each profile keeps its own settings except the counts (shrunk to seconds) and the switches a CPU cannot run
in the time (see `smoke_params`). Marked slow: together about three minutes on two CPU cores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from edm_snapshot_writer import edm_release_network, write_release_snapshot
from local_http_server import LocalFileServer
from workflow_helpers import ROOT, SNAKEMAKE, make_workspace, run

from rfpp.checkpoints import file_sha256, load_model
from rfpp.eval.generate import read_samples
from rfpp.teachers.registry import fid_ref_spec, teacher_spec

# Every real architecture's whole DAG, the longest first (tests/conftest.py runs these first). ffhq64 is afhq64 but
# for its data, teacher snapshot and FID reference (test_ffhq64_…: checked, and its teacher made): the same DAG.
PROFILES = ["afhq64", "imagenet64", "cifar10"]
SAME_DAG = {"ffhq64": "afhq64"}
# The release's ImageNet-64 ADM has 296M parameters: on the CPU about 20 s per training step of two image pairs
# and a 4.7 GB training checkpoint per step. Its whole DAG runs the ADM at a third of that width (model_channels 64
# for 192; every other constructor argument the release's: four levels, three blocks a level, attention at 32/16/8
# with 2-4 heads, 1000 classes, dropout), about a ninth of the FLOPs; the release's own width is served, downloaded
# and converted by the teacher rule (test_a_narrowed_profile_…).
NARROWED = {"imagenet64": dict(model_channels=64)}


def smoke_params(profile: str, teacher_url: str, reference_url: str) -> dict:
    """params/<profile>.yaml with only the counts shrunk and the CPU-incompatible switches changed."""
    p = yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())
    p["teacher"]["source"] = teacher_url  # the random-weight stand-in of the released snapshot, on 127.0.0.1
    p["teacher"]["grid"] = 1  # count: a 1-sample preview grid instead of 64 ...
    p["teacher"]["grid_nfe"] = 1  # count: ... of 1 NFE instead of 15
    p["pairs"]["count"] = 2  # count: 2 pairs ...
    p["pairs"]["num_shards"] = 2  # count: ... in 2 shards ...
    p["pairs"]["batch"] = 1  # count: ... of one 1-pair chunk each (a shard takes whole chunks)
    p["pairs"]["steps"] = 2  # count: 2 Heun steps of EDM's sampler (3 NFE) instead of 18 / 40
    train = p["train"]
    train["steps"] = 1  # count: 1 update ...
    train["batch"] = 2  # count: ... of 2 pairs
    for arm in train["arms"].values():
        if arm.get("batch"):
            arm["batch"] = 2  # count: an arm's own batch likewise
    train["warmup"] = 1  # count: warmup no longer than the run
    train["ckpt_every"] = 1  # count: a checkpoint at each step
    train["eval_batch"] = 1  # count: the end-of-run straightness and grids on 1 noise ...
    train["straightness_nfe"] = 2  # count: ... with 2 Euler steps
    train["num_workers"] = 1  # count: one data-loader worker for 2 pairs
    if train.get("precision", "fp32") != "fp32":
        train["precision"] = "fp32"  # bf16/fp16 autocast on a CPU without native support: ~20x slower than fp32
    if train.get("compile"):
        train["compile"] = False  # torch.compile on a CPU builds C++ kernels for minutes
    p["sample"]["num_samples"] = 2  # count: 2 samples per NFE (FID needs at least 2) ...
    p["sample"]["batch"] = 2  # count: ... in one batch
    p["eval"]["reference"] = reference_url  # the EDM-format reference statistics, on 127.0.0.1
    p["eval"]["num_samples"] = 2  # count: FID over the 2 samples
    return p


def reference_npz(path: Path, dim: int = 2048, seed: int = 0) -> Path:
    """EDM-format FID statistics (mu (D,), sigma (D, D) positive definite, float64) of Inception's pool layer."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=rng.normal(size=dim) * 0.1, sigma=a @ a.T + 0.01 * np.eye(dim))
    return path


def load_light(path: Path) -> dict:
    """A torch file's payload, its tensors memory-mapped (a training checkpoint of the ADM is 4.7 GB)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


@pytest.fixture
def smoke_dir(tmp_path):
    """tmp_path, emptied afterwards: snapshots, teacher, checkpoints take gigabytes for ImageNet-64."""
    yield tmp_path
    for child in tmp_path.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


@pytest.mark.slow
@pytest.mark.real_profile_dag
@pytest.mark.parametrize("profile", PROFILES)
def test_whole_dag_of_the_real_profile_on_the_cpu(profile, smoke_dir, offline_torch_home):
    real = yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())
    spec = teacher_spec(real["teacher"]["source"])
    ref_spec = fid_ref_spec(spec.fid_ref)
    assert real["eval"]["reference"] == ref_spec.url  # the profile's reference is the one served below

    sentinel = smoke_dir / "executed"  # the snapshot's embedded module source would create it if run
    served = smoke_dir / "served"
    served.mkdir()
    narrower = NARROWED.get(profile, {})
    snapshot, net = write_release_snapshot(served / spec.filename, spec, sentinel, **narrower)
    reference = reference_npz(served / ref_spec.filename)
    files = {f"/edm/pretrained/{spec.filename}": snapshot, f"/edm/fid-refs/{ref_spec.filename}": reference}

    with LocalFileServer(files) as server:
        teacher_url = server.url(f"/edm/pretrained/{spec.filename}")
        reference_url = server.url(f"/edm/fid-refs/{ref_spec.filename}")
        params = smoke_params(profile, teacher_url, reference_url)
        work = make_workspace(smoke_dir, {profile: params})
        log = run([SNAKEMAKE, "--cores", "2", "--config", f"profile={profile}"], cwd=work, timeout=1500,
                  TORCH_HOME=str(offline_torch_home))
        assert sorted(path for path, _ in server.state.requests) == sorted(files)  # each fetched once

    arms, nfes, shards = list(params["train"]["arms"]), params["sample"]["nfe"], params["pairs"]["num_shards"]
    jobs = 1 + shards + 1 + len(arms) + 2 * len(arms) + 1 + 1  # teacher … report, all (sample, fid: every NFE)
    assert f"{jobs} of {jobs} steps (100%) done" in log, log[-3000:]
    assert not sentinel.exists(), "loading the snapshot executed code from it"
    results = work / "results" / profile

    # teacher: the URL's snapshot, converted to the real architecture with its exact weights
    teacher, info = load_model(results / "teacher" / "teacher.pt")
    model_type, net_kwargs, _ = edm_release_network(spec)
    net_kwargs.update(narrower)
    assert info["meta"]["source"] == teacher_url and info["meta"]["sha256"] == file_sha256(snapshot)
    assert info["arch"] == model_type == real["teacher"]["arch"]
    assert {k: info["net_kwargs"][k] for k in net_kwargs} == net_kwargs
    teacher_state = teacher.denoiser.net.state_dict()
    assert all(torch.equal(teacher_state[k], v) for k, v in net.state_dict().items())
    assert (results / "teacher" / "samples.png").stat().st_size > 0

    # pairs: 2 pairs in 2 shards from this teacher, EDM's Heun sampler
    manifest = json.loads((results / "pairs" / "manifest.json").read_text())
    assert manifest["spec"]["count"] == 2 and len(manifest["shards"]) == shards
    assert manifest["spec"]["shape"] == [3, spec.resolution, spec.resolution]
    assert manifest["teacher"]["source"] == teacher_url
    assert manifest["sampler"] == {"name": "edm_heun", "steps": 2, "nfe": 3, "dtype": real["pairs"]["dtype"]}

    for arm in arms:
        # train: one update from the teacher's weights, its checkpoint, the EMA student
        ckpts = sorted((results / "train" / arm / "seed0" / "checkpoints").glob("step-*.pt"))
        assert [int(re.search(r"\d+", c.name).group()) for c in ckpts] == [1]
        last = load_light(ckpts[-1])
        assert last["step"] == 1 and math.isfinite(last["metrics"]["loss"])
        model = {k.removeprefix("denoiser.net."): v for k, v in last["model"].items()}
        assert model.keys() == teacher_state.keys()
        moved = [k for k, v in model.items() if not torch.equal(v, teacher_state[k])]
        assert moved, "an Adam update left every weight of the student at the teacher's value"
        student, meta = load_model(results / "train" / arm / "seed0" / "final.pt")
        assert meta["arch"] == info["arch"] and meta["meta"]["steps"] == 1
        assert meta["meta"]["init"] == "teacher" and meta["meta"]["loss"] == real["train"]["arms"][arm]["loss"]
        if "lpips" in meta["meta"]["loss"]:
            assert "perceptual: lpips-vgg16" in meta["meta"]["perceptual"]  # the VGG16 file of TORCH_HOME
        del last, model, student

        for nfe in nfes:
            images, labels, sample_meta = read_samples(results / "samples" / arm / "seed0" / f"nfe{nfe}.npz")
            assert tuple(images.shape) == (2, 3, spec.resolution, spec.resolution) and images.dtype == torch.uint8
            assert sample_meta["nfe"] == nfe
            if spec.conditional:
                assert labels.min() >= 0 and labels.max() < 1000
            # FID: finite, with the protocol naming Inception and the served reference
            fid = json.loads((results / "fid" / f"{arm}-seed0-nfe{nfe}.json").read_text())
            assert math.isfinite(fid["value"]) and fid["value"] > 0
            protocol = fid["protocol"]
            assert protocol["feature_net"] == "inception" and protocol["feature_layer"] == "2048"
            assert protocol["num_samples"] == 2
            assert protocol["reference"] == reference_url
            assert protocol["reference_sha256"] == hashlib.sha256(reference.read_bytes()).hexdigest()
            assert fid["sampling"]["nfe"] == nfe and fid["arm"] == arm
    assert sorted(p.name for p in (results / "fid").glob("*.json")) == \
        sorted(f"{a}-seed0-nfe{k}.json" for a in arms for k in nfes)

    # report: one table row with an FID per arm and NFE, measured with Inception against the served reference
    report = (results / "report.md").read_text()
    assert "**FID feature network:** Inception-v3 features." in report and f"`{reference_url}`" in report
    for arm in arms:
        for nfe in nfes:
            assert re.search(rf"^\| {re.escape(arm)} \| {nfe} \| \d[^|]* \|", report, re.M), report


@pytest.mark.slow
@pytest.mark.real_profile_dag
@pytest.mark.parametrize("profile", sorted(SAME_DAG))
def test_a_profile_whose_dag_is_another_ones_differs_only_in_names(profile, smoke_dir, offline_torch_home):
    """ffhq64 differs from afhq64 only in data.dataset, teacher.source and eval.reference, and its released snapshot
    has afhq64's architecture, resolution, conditioning and preconditioning: afhq64's whole DAG above runs its
    stages. What is its own is checked here: its snapshot is served, downloaded and converted (the teacher rule),
    and its FID reference is the registry's. A change that makes the two differ otherwise fails here: then give
    ffhq64 its own whole-DAG run (PROFILES)."""
    twin = SAME_DAG[profile]
    mine, theirs = (yaml.safe_load((ROOT / "params" / f"{p}.yaml").read_text()) for p in (profile, twin))
    names = {("profile",), ("data", "dataset"), ("teacher", "source"), ("eval", "reference")}

    def without_names(p: dict) -> dict:
        p = copy.deepcopy(p)
        for path in names:
            node = p
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        return p

    assert without_names(mine) == without_names(theirs)
    spec, twin_spec = teacher_spec(mine["teacher"]["source"]), teacher_spec(theirs["teacher"]["source"])
    assert (spec.arch, spec.precond, spec.resolution, spec.conditional) == \
        (twin_spec.arch, twin_spec.precond, twin_spec.resolution, twin_spec.conditional)
    assert mine["eval"]["reference"] == fid_ref_spec(spec.fid_ref).url

    teacher_rule_alone(profile, smoke_dir, offline_torch_home)


@pytest.mark.slow
@pytest.mark.real_profile_dag
@pytest.mark.parametrize("profile", sorted(NARROWED))
def test_a_narrowed_profile_converts_the_release_width_of_its_teacher(profile, smoke_dir, offline_torch_home):
    """The whole-DAG test runs this profile's network narrower (NARROWED); the release's own width (ImageNet-64: the
    296M-parameter ADM, a 1.2 GB snapshot) is served, downloaded and converted here with its exact weights."""
    teacher_rule_alone(profile, smoke_dir, offline_torch_home)


def teacher_rule_alone(profile: str, smoke_dir: Path, torch_home: Path) -> None:
    """The teacher rule of `profile` alone, on a stand-in of its released snapshot at the release's width served from
    127.0.0.1 under the real file name: fetched once, converted to the release's architecture with its exact weights,
    no code in the snapshot run."""
    spec = teacher_spec(yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())["teacher"]["source"])
    sentinel = smoke_dir / "executed"
    served = smoke_dir / "served"
    served.mkdir()
    snapshot, net = write_release_snapshot(served / spec.filename, spec, sentinel)
    with LocalFileServer({f"/edm/pretrained/{spec.filename}": snapshot}) as server:
        url = server.url(f"/edm/pretrained/{spec.filename}")
        work = make_workspace(smoke_dir, {profile: smoke_params(profile, url, "unused")})
        target = f"results/{profile}/teacher/teacher.pt"
        log = run([SNAKEMAKE, target, "--cores", "2", "--config", f"profile={profile}"], cwd=work, timeout=600,
                  TORCH_HOME=str(torch_home))
        assert [path for path, _ in server.state.requests] == [f"/edm/pretrained/{spec.filename}"]
    assert "1 of 1 steps (100%) done" in log, log[-3000:]
    assert not sentinel.exists(), "loading the snapshot executed code from it"
    teacher, info = load_model(work / target)
    assert info["meta"]["source"] == url and info["meta"]["sha256"] == file_sha256(snapshot)
    model_type, net_kwargs, _ = edm_release_network(spec)
    assert info["arch"] == model_type and {k: info["net_kwargs"][k] for k in net_kwargs} == net_kwargs
    teacher_state = teacher.denoiser.net.state_dict()
    assert all(torch.equal(teacher_state[k], v) for k, v in net.state_dict().items())
