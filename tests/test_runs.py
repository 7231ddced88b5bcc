"""Arm runs on a real SQLite store after real tiny pipelines (Snakemake, tracking on): the tiny profile (one training
seed, NFE 1 and 2, arms baseline and rfpp) run twice, with train.lr 2e-4 then 4e-4 (tools/mlflow_compare_check.py
make_store), shared by every test here; `rfpp runs`; the report as HTML; the MLflow UI's compare page in headless
Chromium."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from workflow_helpers import BIN, ROOT, env

pytestmark = [pytest.mark.slow, pytest.mark.tracking, pytest.mark.xdist_group("tiny-mlflow-store")]

_spec = importlib.util.spec_from_file_location("mlflow_compare_check", ROOT / "tools" / "mlflow_compare_check.py")
check_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_tool)
LRS = check_tool.LEARNING_RATES


@dataclasses.dataclass
class Store:
    folder: Path
    uri: str

    @property
    def work(self) -> Path:
        return self.folder / "work"

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def runs(self, query: str = "") -> list:
        client = self.client()
        experiment = client.get_experiment_by_name("rfpp-tiny")
        return client.search_runs([experiment.experiment_id], query, max_results=1000)

    def arm_runs(self, lr: float | None = None) -> dict[str, object]:
        runs = self.runs("tags.`rfpp.arm_run` = '1'")
        return {r.data.tags["rfpp.arm"]: r for r in runs if lr is None or float(r.data.params["train.lr"]) == lr}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Two pipeline runs of the tiny profile (train.lr 2e-4, then 4e-4) tracking into one SQLite store."""
    folder = tmp_path_factory.mktemp("runs")
    return Store(folder, check_tool.make_store(folder))


def _fid_json(store: Store, lr: float, arm: str, nfe: int) -> float:
    return json.loads((store.folder / f"fid-lr{lr}" / f"{arm}-seed0-nfe{nfe}.json").read_text())["value"]


def test_one_arm_run_per_arm_seed_and_recipe_with_its_own_settings_and_fids(store: Store) -> None:
    """Each pipeline run made one arm run per arm (seed 0), named <arm>-seed0; the two arms' parameters differ in
    exactly the arms' differing settings (arm.*), nothing of the other arm is there; fid_nfe1/fid_nfe2 are the
    FID jsons' values, with straightness, training images/s and final loss terms beside them."""
    from rfpp.config import load_config
    from rfpp.tracking import arm_recipe

    config = load_config(str(store.work / "params" / "tiny.yaml"), [f"train.lr={LRS[0]}"]).for_training_seed(0)
    assert len(store.arm_runs()) == 2 and len(store.runs("tags.`rfpp.arm_run` = '1'")) == 4
    for lr in LRS:
        runs = store.arm_runs(lr)
        assert sorted(runs) == ["baseline", "rfpp"]
        params = {arm: run.data.params for arm, run in runs.items()}
        differing = {k for k in params["rfpp"].keys() | params["baseline"].keys()
                     if params["rfpp"].get(k) != params["baseline"].get(k)}
        arms = config.train.arms
        expected = {f"arm.{f.name}" for f in dataclasses.fields(arms["rfpp"])
                    if getattr(arms["rfpp"], f.name) != getattr(arms["baseline"], f.name)}
        assert differing == expected == {"arm.timesteps", "arm.loss"}
        for arm, run in runs.items():
            assert run.info.run_name == f"{arm}-seed0" and run.info.status == "FINISHED"
            assert not any(k.startswith("train.arms") or k == "sample.nfe" for k in run.data.params)
            recipe = arm_recipe(dataclasses.replace(config, train=dataclasses.replace(config.train, lr=lr)), arm, 0)
            assert run.data.params == recipe  # the arm's resolved recipe, nothing else
            metrics = run.data.metrics
            for nfe in (1, 2):
                assert metrics[f"fid_nfe{nfe}"] == _fid_json(store, lr, arm, nfe)
                assert f"straightness_nfe{nfe}" in metrics
            assert metrics["train_images_per_s"] > 0 and "final_loss" in metrics
            assert ("final_loss_l2_squared" if arm == "baseline" else "final_loss_lpips") in metrics
    first, second = store.arm_runs(LRS[0])["rfpp"], store.arm_runs(LRS[1])["rfpp"]
    assert {first.data.params["train.lr"], second.data.params["train.lr"]} == {str(lr) for lr in LRS}
    assert first.data.metrics["fid_nfe1"] != second.data.metrics["fid_nfe1"]  # another student, another FID


def test_stage_runs_nest_under_their_arm_run_and_every_run_records_code_and_profile(store: Store) -> None:
    """train, sample and fid runs of an arm nest under its arm run (sample/fid runs named per NFE); teacher, pairs,
    features and report under the session parent, as the arm runs; every run records the commit, the dirty flag
    and the sha256 of the profile file it read (which the second pipeline run had changed)."""
    runs = store.runs()
    by_id = {r.info.run_id: r for r in runs}
    parents = [r for r in runs if r.data.tags.get("rfpp.parent") == "1"]
    assert len(parents) == 1
    parent = parents[0].info.run_id
    arm_ids = {r.info.run_id for r in runs if r.data.tags.get("rfpp.arm_run") == "1"}
    for run in runs:
        tags = run.data.tags
        if run.info.run_id == parent:
            continue
        up = tags["mlflow.parentRunId"]
        if tags.get("rfpp.stage") in ("train", "sample", "fid"):
            assert up in arm_ids
            arm = by_id[up]
            assert (arm.data.tags["rfpp.arm"], arm.data.tags["rfpp.seed"]) == (tags["rfpp.arm"], tags["rfpp.seed"])
            assert arm.data.params["train.lr"] == run.data.params["train.lr"]
            if tags["rfpp.stage"] != "train":
                nfe = run.data.params["nfe"]
                assert run.info.run_name == f"{tags['rfpp.stage']}-{tags['rfpp.arm']}-seed0-nfe{nfe}"
        else:
            assert up == parent, run.info.run_name
        assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["mlflow.source.git.commit"])
        assert tags["rfpp.git_dirty"] in ("true", "false")
        assert tags["rfpp.profile_file"] == str((store.work / "params" / "tiny.yaml").resolve())
        assert re.fullmatch(r"[0-9a-f]{64}", tags["rfpp.profile_sha256"])
    shas = {lr: {r.data.tags["rfpp.profile_sha256"] for r in store.arm_runs(lr).values()} for lr in LRS}
    assert len(shas[LRS[0]]) == len(shas[LRS[1]]) == 1 and shas[LRS[0]] != shas[LRS[1]]
    now = hashlib.sha256((store.work / "params" / "tiny.yaml").read_bytes()).hexdigest()
    assert shas[LRS[1]] == {now}
    assert sum(r.data.tags.get("rfpp.stage") == "teacher" for r in runs) == 1  # the second run made no teacher


def test_rfpp_runs_prints_the_four_arm_runs_side_by_side(store: Store) -> None:
    """`rfpp runs --profile <yaml>`: one row per arm run, the settings that differ (arm.loss, arm.timesteps,
    train.lr) and FID per NFE as the store holds them; an experiment that does not exist exits 1 in one line."""
    from rfpp.runs import compare, table

    comparison = compare("tiny", store.uri)
    settings = [k for k in comparison.differing if k != "code"]  # code: when a commit fell between the runs
    assert settings == ["arm.loss", "arm.timesteps", "train.lr"] and comparison.nfes == [1, 2]
    rows = table(comparison)
    proc = subprocess.run([str(BIN / "rfpp"), "runs", "--profile", "params/tiny.yaml"], cwd=store.work,
                          capture_output=True, text=True, timeout=120,
                          env={**env(), "RFPP_TRACKING": "on", "MLFLOW_TRACKING_URI": store.uri})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("4 arm run(s) of experiment rfpp-tiny")
    header = lines[1].split()  # "started (UTC)" is two words, as the start time (date, time) below it
    assert [h for h in header if h != "code"] == ["run", "id", "started", "(UTC)", "arm", "seed", "arm.loss",
                                                  "arm.timesteps", "train.lr", "FID@1", "FID@2"]
    printed = [dict(zip(header, line.split(), strict=True)) for line in lines[2:]]
    assert len(printed) == 4 == len(rows) - 1
    for lr in LRS:
        for arm, run in store.arm_runs(lr).items():
            row = next(r for r in printed if r["id"] == run.info.run_id[:8])
            assert (row["run"], row["arm"], row["seed"]) == (f"{arm}-seed0", arm, "0")
            assert (row["arm.loss"], float(row["train.lr"])) == (run.data.params["arm.loss"], lr)
            assert [float(row[f"FID@{k}"]) for k in (1, 2)] == [round(_fid_json(store, lr, arm, k), 4) for k in (1, 2)]

    missing = subprocess.run([str(BIN / "rfpp"), "runs", "--profile", "nosuch"], cwd=store.work, capture_output=True,
                             text=True, timeout=120, env={**env(), "MLFLOW_TRACKING_URI": store.uri})
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().count("\n") == 0 and "no experiment 'rfpp-nosuch'" in missing.stderr


def test_the_report_run_holds_a_self_contained_html_report(store: Store, tmp_path: Path) -> None:
    """The report's run holds report.html: its tables as HTML tables and every plot and sample grid embedded (no
    relative link, which MLflow's sandboxed viewer could not load)."""
    client = store.client()
    report = max(store.runs("tags.`rfpp.stage` = 'report'"), key=lambda r: r.info.start_time)
    assert {"report.md", "report.html"} <= {a.path for a in client.list_artifacts(report.info.run_id)}
    page = Path(client.download_artifacts(report.info.run_id, "report.html", str(tmp_path))).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "rfpp report: profile" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (store.work / "results" / "tiny" / "report.md").read_text())
    assert len(images) == len(linked) >= 3  # FID vs NFE, loss curves, timesteps, grids
    for src, link in zip(images, linked, strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (store.work / "results" / "tiny" / link).read_bytes()


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_the_mlflow_compare_page_shows_fid_per_nfe_and_the_differing_settings(store: Store, tmp_path: Path) -> None:
    """A real `mlflow server` on the store and the compare page of the four arm runs in headless Chromium: FID per NFE
    for every run as the store holds it, and, with "Show diff only", exactly the settings that differ; report.html
    in the artifact viewer with every plot and grid loaded."""
    pytest.importorskip("selenium")
    shot = tmp_path / "compare.png"
    seen = check_tool.check_compare_page(store.uri, "tiny", shot)
    assert sorted(seen["runs"]) == sorted(r.info.run_id for r in store.runs("tags.`rfpp.arm_run` = '1'"))
    assert sorted(seen["fid"]) == [1, 2] and all(len(cells) == 4 for cells in seen["fid"].values())
    assert sorted(seen["settings"]) == ["arm.loss", "arm.timesteps", "train.lr"]
    assert seen["hidden"] is not None
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = check_tool.check_report_page(store.uri, "tiny", tmp_path / "report.png")
    assert [alt for alt, _ in report["images"]][:3] == ["FID vs NFE", "Training loss", "Timestep density per arm"]
    if os.environ.get("RFPP_SCREENSHOT_DIR"):  # keep it (CI artifacts, the note's description)
        shutil.copy(shot, Path(os.environ["RFPP_SCREENSHOT_DIR"]) / "mlflow-compare.png")

