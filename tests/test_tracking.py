"""rfpp.tracking against real MLflow stores: a SQLite file, MLflow's default URI and a live `mlflow server`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import inspect
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from PIL import Image

import rfpp
from rfpp.config import load_config
from rfpp.tracking import NullRun, TrackingError, code_version, stage_run, start_run, tracking_uri

ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_AGENT_HINT": "1",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey job workers: faster start, fewer processes


def _png(path: Path) -> Path:
    Image.new("L", (8, 8), color=128).save(path)
    return path


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module (creating MLflow's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.delenv("RFPP_TRACKING", raising=False)
    monkeypatch.delenv("RFPP_TRACKING_GROUP", raising=False)
    monkeypatch.chdir(tmp_path)  # the default group is <cwd>/results/<profile>: one per test
    return sqlite_uri


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_two_arms_one_parent_params_metrics_artifacts_tags(store: str, tmp_path: Path) -> None:
    config = load_config("digits")
    png = _png(tmp_path / "grid.png")
    ids = {}
    for arm in ("rfpp", "baseline"):
        with start_run(config, stage="train", arm=arm, tags={"extra": 1}) as run:
            run.log_config(config)
            run.log_params({"arm_setting": {"loss": arm}})
            for step in range(5):
                run.log_metrics({"loss": 1.0 / (step + 1), "lr": 2e-4}, step=step * 10)
            run.log_image_file(png)
            run.set_tags({"note": "hello"})
            ids[arm] = run.run_id
            assert isinstance(run.run_id, str) and run.parent_run_id
    with start_run(config, stage="teacher") as teacher:
        pass

    client = _client(store)
    experiment = client.get_experiment_by_name("rfpp-digits")
    assert experiment is not None
    runs = {a: client.get_run(i) for a, i in ids.items()}
    parent_ids = {r.data.tags["mlflow.parentRunId"] for r in runs.values()}
    assert len(parent_ids) == 1 and client.get_run(teacher.run_id).data.tags["mlflow.parentRunId"] in parent_ids
    parent = client.get_run(parent_ids.pop())
    assert parent.data.tags["rfpp.parent"] == "1" and parent.data.tags["rfpp.profile"] == "digits"
    assert parent.data.tags["rfpp.group"] == str((tmp_path / "results" / "digits").resolve())
    for arm, run in runs.items():
        assert run.info.experiment_id == experiment.experiment_id
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"train-{arm}"
        tags = run.data.tags
        assert (tags["rfpp.profile"], tags["rfpp.stage"], tags["rfpp.arm"]) == ("digits", "train", arm)
        assert tags["rfpp.code_version"] == code_version()
        assert tags["rfpp.code_version"].startswith(rfpp.__version__ + "+")
        assert tags["extra"] == "1" and tags["note"] == "hello"
        params = run.data.params
        assert params["train.lr"] == str(config.train.lr)
        assert params["train.arms.rfpp.loss"] == config.train.arms["rfpp"].loss
        assert params["profile"] == "digits" and params["arm_setting.loss"] == arm
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 10, 20, 30, 40]
        assert min(m.value for m in history) == pytest.approx(0.2)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "samples"}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/grid.png"]
        saved = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        assert yaml.safe_load(Path(saved).read_text())["train"]["lr"] == config.train.lr
    assert "rfpp.arm" not in client.get_run(teacher.run_id).data.tags


def test_features_stage_opens_its_run(store: str, tmp_path: Path) -> None:
    """`rfpp features` logs like every stage: a child run tagged stage=features with the accuracy metric; a
    classifier below --min-accuracy ends its run FAILED with the reason."""
    from typer.testing import CliRunner

    from cli.main import app

    ok = CliRunner().invoke(app, ["features", "--steps", "30", "--min-accuracy", "0", "--out", str(tmp_path / "a.pt")])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["features", "--steps", "1", "--min-accuracy", "1", "--out", str(tmp_path / "b.pt")])
    assert bad.exit_code == 1 and "below --min-accuracy" in bad.output
    client = _client(store)
    experiment = client.get_experiment_by_name("rfpp-digits")
    runs = client.search_runs([experiment.experiment_id], "tags.`rfpp.stage` = 'features'",
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    first, second = runs
    assert first.data.tags["rfpp.features.path"] == str(tmp_path / "a.pt")
    assert 0 < first.data.metrics["accuracy"] <= 1 and "mlflow.parentRunId" in first.data.tags
    assert first.data.params["eval.feature_resolution"] == "16"
    assert "below --min-accuracy" in second.data.tags["rfpp.error"]


def test_failed_killed_and_clean_exit_statuses(store: str) -> None:
    config = load_config("digits")
    runs = {}
    with pytest.raises(ValueError, match="boom"):
        with start_run(config, stage="train", arm="a") as run:
            runs["failed"] = run.run_id
            run.log_metrics({"loss": 1.0}, step=1)
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with start_run(config, stage="train", arm="b") as run:
            runs["killed"] = run.run_id
            raise KeyboardInterrupt
    with pytest.raises(SystemExit):
        with start_run(config, stage="fid") as run:
            runs["exit0"] = run.run_id
            sys.exit(0)
    client = _client(store)
    assert client.get_run(runs["failed"]).info.status == "FAILED"
    assert client.get_run(runs["failed"]).data.tags["rfpp.error"] == "ValueError: boom"
    assert client.get_run(runs["failed"]).data.metrics["loss"] == 1.0  # flushed before ending
    assert client.get_run(runs["killed"]).info.status == "KILLED"
    assert client.get_run(runs["exit0"]).info.status == "FINISHED"


def test_tracking_failures_during_a_run_warn_once_and_never_raise(store: str, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = load_config("digits")
    with caplog.at_level(logging.WARNING, logger="rfpp.tracking"):
        with start_run(config, stage="train", arm="rfpp") as run:
            run.log_metrics({"../escape": 1.0, "not_a_number": "x", "ok": 2.0}, step=3)
            run.log_artifact(tmp_path / "missing.png")
            run.log_params({"p": "v" * 10_000})  # truncated, not rejected
    warnings = [r for r in caplog.records if r.name == "rfpp.tracking"]
    assert len(warnings) == 1 and run.failures == 3
    result = _client(store).get_run(run.run_id)
    assert result.info.status == "FINISHED"
    assert result.data.metrics == {"ok": 2.0}
    assert len(result.data.params["p"]) == 6000


def test_metrics_are_batched_until_flush(store: str) -> None:
    config = load_config("digits")
    with start_run(config, stage="train", arm="rfpp") as run:
        client = _client(store)
        run.flush_secs = 3600.0
        for step in range(50):
            run.log_metrics({"loss": float(step)}, step=step)
        assert client.get_metric_history(run.run_id, "loss") == []  # still buffered
        run.flush()
        assert len(client.get_metric_history(run.run_id, "loss")) == 50
        for step in range(50, 1100):
            run.log_metrics({"loss": float(step)}, step=step)
        assert len(client.get_metric_history(run.run_id, "loss")) >= 1000  # a full batch went out
    assert len(client.get_metric_history(run.run_id, "loss")) == 1100


def test_default_uri_is_what_mlflow_ui_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.cli
    from mlflow.tracking._tracking_service.utils import _get_default_tracking_uri
    from mlflow.utils.file_utils import path_to_local_sqlite_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RFPP_TRACKING", raising=False)
    monkeypatch.chdir(tmp_path)
    # `mlflow ui` is an alias of `mlflow server`, whose --backend-store-uri defaults to _get_default_tracking_uri()
    ui = mlflow.cli.cli.get_command(None, "ui")
    assert ui is mlflow.cli.server
    option = next(p for p in ui.params if p.name == "backend_store_uri")
    assert option.default is None and "_get_default_tracking_uri()" in inspect.getsource(ui.callback)
    default = _get_default_tracking_uri()
    assert default == "sqlite:///mlflow.db"  # MLflow 3.17 (falls back to ./mlruns only for a legacy file store)
    expected = path_to_local_sqlite_uri(os.path.abspath(unquote(default.removeprefix("sqlite:///"))))
    assert tracking_uri() == expected

    with start_run(load_config("digits"), stage="teacher") as run:
        run.log_image_file(_png(tmp_path / "x.png"))
    assert (tmp_path / "mlflow.db").is_file()
    assert _client(expected).get_run(run.run_id).info.status == "FINISHED"
    assert (tmp_path / "mlruns").is_dir()  # where artifacts of runs logged straight to the store go
    assert list((tmp_path / "mlruns").rglob("x.png"))


def test_stage_run_logs_the_config_and_is_a_null_run_off_rank_0(store: str, tmp_path: Path) -> None:
    """The one helper every stage opens its run with: the run of `start_run` with the resolved configuration
    logged (params and config.yaml); `enabled=False` (a rank other than 0) opens nothing."""
    config = load_config("digits", ["sample.t_start=0.999"])
    with stage_run(config, "sample", arm="rfpp") as run:
        run.log_metrics({"straightness_nfe1": 0.5})
    with stage_run(config, "train", arm="rfpp", enabled=False) as other:
        assert isinstance(other, NullRun) and other.run_id is None
    client = _client(store)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags["rfpp.stage"] == "sample"
    assert logged.data.params["sample.t_start"] == "0.999" and logged.data.metrics["straightness_nfe1"] == 0.5
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"config.yaml"}
    siblings = client.search_runs([logged.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{logged.data.tags['mlflow.parentRunId']}'")
    assert [r.info.run_id for r in siblings] == [run.run_id]


def test_disabled_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFPP_TRACKING", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # would fail if it were used
    monkeypatch.chdir(tmp_path)
    config = load_config("digits")
    with start_run(config, stage="train", arm="rfpp", run_name="x", tags={"a": 1}) as run:
        assert isinstance(run, NullRun) and run.run_id is None
        run.log_config(config)
        run.log_params({"a": 1})
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_artifact(tmp_path / "nothing")
        run.log_image_file(tmp_path / "nothing.png")
        run.set_tags({"b": 2})
        run.flush()
    with pytest.raises(ValueError):
        with start_run(config, stage="train"):
            raise ValueError("still propagates")
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "nosuchscheme://nowhere"])
def test_unusable_uri_fails_at_start_naming_uri_and_fix(uri: str, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    uri = uri.format(port=_free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RFPP_TRACKING", raising=False)
    monkeypatch.chdir(tmp_path)
    entered = False
    with pytest.raises(TrackingError) as err:
        with start_run(load_config("digits"), stage="train"):
            entered = True
    assert not entered
    assert uri in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value) and "RFPP_TRACKING=off" in str(err.value)


STAGE_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from PIL import Image
    from rfpp.config import load_config
    from rfpp.tracking import start_run

    arm = sys.argv[1]
    config = load_config("digits", [f"train.lr={sys.argv[2]}"])
    png = Path(f"{arm}.png")
    Image.new("L", (8, 8), color=200).save(png)
    with start_run(config, stage="train", arm=arm) as run:
        run.log_config(config)
        for step in range(3):
            run.log_metrics({"loss": 1.0 + step}, step=step)
        run.log_image_file(png)
    print(run.run_id)
""")


@pytest.mark.slow
def test_stages_started_together_on_a_new_sqlite_store(tmp_path: Path) -> None:
    """Snakemake starts `rfpp teacher` and `rfpp features` at once on a fresh checkout: three processes
    opening runs on a SQLite store that does not exist yet must not race creating its tables, and share one
    parent run."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "RFPP_TRACKING_GROUP": "together"}
    env.pop("RFPP_TRACKING", None)
    stages = [subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT, arm, "1e-4"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for arm in "abc"]
    outputs = [stage.communicate(timeout=300) for stage in stages]
    for stage, (_out, errout) in zip(stages, outputs, strict=True):
        assert stage.returncode == 0, errout[-3000:]
    client = _client(uri)
    runs = [client.get_run(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert {r.data.tags["rfpp.arm"] for r in runs} == {"a", "b", "c"}
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1


@pytest.mark.slow
def test_real_mlflow_server_receives_separate_stage_processes(tmp_path: Path) -> None:
    from test_runs import check_tool  # the MLflow server of the compare-page check (tools/mlflow_compare_check.py)

    env = {**os.environ, **QUIET_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = check_tool.mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server.log", timeout=120,
                                      args=("--artifacts-destination", str(tmp_path / "artifacts")), cwd=tmp_path)
    with server as uri:
        stage_env = {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT), "RFPP_TRACKING_GROUP": "session-1"}
        stages = [subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT, arm, lr], cwd=tmp_path, env=stage_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for arm, lr in (("rfpp", "1e-4"), ("baseline", "3e-4"))]  # concurrently, like Snakemake
        outputs = [stage.communicate(timeout=180) for stage in stages]
        for stage, (_out, errout) in zip(stages, outputs, strict=True):
            assert stage.returncode == 0, errout[-3000:]
        run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]

        client = _client(uri)
        experiment = client.get_experiment_by_name("rfpp-digits")
        runs = [client.get_run(i) for i in run_ids]
        assert {r.data.tags["rfpp.arm"] for r in runs} == {"rfpp", "baseline"}
        assert {r.data.params["train.lr"] for r in runs} == {"0.0001", "0.0003"}
        parents = client.search_runs([experiment.experiment_id], "tags.`rfpp.parent` = '1'")
        assert len(parents) == 1
        for run in runs:
            assert run.info.status == "FINISHED" and run.info.experiment_id == experiment.experiment_id
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert run.data.tags["rfpp.group"] == "session-1"
            assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
            arm = run.data.tags["rfpp.arm"]
            assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == [f"samples/{arm}.png"]
            assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        stored = {p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()}
        assert {"rfpp.png", "baseline.png", "config.yaml"} <= stored  # proxied into --artifacts-destination



def test_a_corrupt_store_fails_any_stage_in_one_line(store: str, tmp_path: Path) -> None:
    """4 KiB of random bytes over the start of mlflow.db: `rfpp sample` and `rfpp teacher` (stages with their own
    error handling) each fail with one line naming the store and the fixes, exit 1, no traceback."""
    from rfpp.checkpoints import save_model
    from rfpp.nets import SongUNet

    with start_run(load_config("digits"), stage="teacher"):
        pass  # the module's store exists now
    db = tmp_path / "broken" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(Path(store.removeprefix("sqlite:///")).read_bytes())
    with db.open("r+b") as handle:
        handle.write(os.urandom(4096))
    uri = f"sqlite:///{db}"
    save_model(tmp_path / "results/digits/train/rfpp/seed0/final.pt",
               SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1],
                        num_blocks=1, attn_resolutions=[], dropout=0.0))
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RFPP_TRACKING", None)
    small = ["teacher.net.model_channels=8", "teacher.net.channel_mult=[1]", "train.seeds=[0]"]
    stages = [subprocess.Popen(["rfpp", *args, *small], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
              for args in (["sample", "--nfe", "1", "--arm", "rfpp", "--num-samples", "4"], ["teacher"])]
    for stage in stages:
        _out, errout = stage.communicate(timeout=300)
        assert stage.returncode == 1, errout[-3000:]
        lines = errout.strip().splitlines()
        assert len(lines) == 1, errout[-3000:]
        assert uri in lines[0] and "RFPP_TRACKING=off" in lines[0] and f"move the damaged store {db} away" in lines[0]
    assert not (tmp_path / "results/digits/samples/rfpp/seed0/nfe1.npz").exists()
    assert not (tmp_path / "results/digits/teacher/teacher.pt").exists()


KILLABLE_STAGE = textwrap.dedent("""
    import sys, time
    from rfpp.config import load_config
    from rfpp.tracking import start_run

    with start_run(load_config("digits"), stage="train", arm=sys.argv[1]) as run:
        print(run.run_id, flush=True)
        time.sleep(600)
""")


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[0]


def test_runs_of_killed_stages_end_killed_when_the_next_stage_starts(store: str, tmp_path: Path) -> None:
    """Stages killed with SIGKILL (one reaped, one left a zombie) leave RUNNING runs; the next stage that starts a
    run marks them KILLED, and a run whose pid now belongs to another process (another start time), but not a live
    stage's run nor another host's."""
    import socket as socket_

    from rfpp.lifeline import start_time

    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(ROOT)}
    env.pop("RFPP_TRACKING", None)
    stages = {arm: subprocess.Popen([sys.executable, "-c", KILLABLE_STAGE, arm], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
              for arm in ("reaped", "zombie", "alive")}
    try:
        ids = {arm: stage.stdout.readline().strip() for arm, stage in stages.items()}
        assert all(ids.values()), ids
        client = _client(store)
        host = socket_.gethostname()
        for arm, run_id in ids.items():
            tags = client.get_run(run_id).data.tags
            assert (tags["rfpp.host"], tags["rfpp.pid"]) == (host, str(stages[arm].pid))
            assert tags["rfpp.pid_start"] == str(start_time(stages[arm].pid))
        for arm in ("reaped", "zombie"):
            os.kill(stages[arm].pid, signal.SIGKILL)
        stages["reaped"].wait(timeout=60)
        deadline = time.monotonic() + 60
        while _state(stages["zombie"].pid) != "Z":  # dead, not reaped (this test never waits for it)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        experiment_id = client.get_run(ids["alive"]).info.experiment_id
        reused = client.create_run(experiment_id, tags={"rfpp.host": host, "rfpp.pid": str(os.getpid()),
                                                        "rfpp.pid_start": "1"}).info.run_id
        elsewhere = client.create_run(experiment_id, tags={"rfpp.host": "another-host", "rfpp.pid": str(
            stages["reaped"].pid), "rfpp.pid_start": "1"}).info.run_id
        assert {client.get_run(i).info.status for i in [*ids.values(), reused, elsewhere]} == {"RUNNING"}

        with start_run(load_config("digits"), stage="report") as run:
            pass
        status = {name: client.get_run(i).info.status for name, i in
                  {**ids, "reused": reused, "elsewhere": elsewhere, "next": run.run_id}.items()}
        assert status == {"reaped": "KILLED", "zombie": "KILLED", "alive": "RUNNING", "reused": "KILLED",
                          "elsewhere": "RUNNING", "next": "FINISHED"}
        error = client.get_run(ids["reaped"]).data.tags["rfpp.error"]
        assert f"process {stages['reaped'].pid} on {host} died" in error
    finally:
        for stage in stages.values():
            with contextlib.suppress(ProcessLookupError):
                stage.kill()
            stage.wait(timeout=60)
            stage.stdout.close()


# ------------------------------------------------------------------------------------------------- arm runs


def test_arm_recipe_is_the_arms_resolved_settings_and_nothing_of_other_arms() -> None:
    from rfpp.tracking import arm_recipe

    config = load_config("digits", ["train.arms.rfpp.batch=32", "train.seeds=[0, 1]"]).for_training_seed(1)
    rfpp_, baseline = arm_recipe(config, "rfpp", 1), arm_recipe(config, "baseline", 1)
    assert rfpp_ is not None and baseline is not None and rfpp_.keys() == baseline.keys()
    assert {k for k in rfpp_ if rfpp_[k] != baseline[k]} == {"arm.timesteps", "arm.loss", "arm.batch"}
    assert (rfpp_["arm.batch"], baseline["arm.batch"]) == ("32", str(config.train.batch))  # resolved
    assert rfpp_["seed"] == "1" and rfpp_["train.lr"] == str(config.train.lr)
    assert not any(k.startswith("train.arms") or k in ("sample.nfe", "train.seeds", "train.batch", "device")
                   for k in rfpp_)
    assert arm_recipe(config, "not-an-arm", 1) is None and arm_recipe(config, "rfpp", None) is None


def test_stages_of_an_arm_share_its_arm_run_and_another_recipe_makes_another(store: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """sample and fid stage runs of (rfpp, seed 0) nest under one arm run named rfpp-seed0 that carries the recipe
    and the summary metrics (a stage of another code version too, listed in rfpp.code_versions); another train.lr
    gives another arm run beside it under the same session parent."""
    from rfpp.tracking import arm_recipe

    config = load_config("digits").for_training_seed(0)
    ids = []
    for stage, metrics in (("sample", {"straightness_nfe1": 0.25}), ("fid", {"fid_nfe1": 12.5})):
        with stage_run(config, stage, arm="rfpp", seed=0) as run:
            run.log_summary(metrics)
            ids.append((run.run_id, run.arm_run_id, run.parent_run_id))
    with monkeypatch.context() as patch:  # a stage of another code version joins the same arm run, which says so
        patch.setattr(rfpp, "__version__", "9.9.9")
        with stage_run(config, "train", arm="rfpp", seed=0) as run:
            assert run.arm_run_id == ids[0][1]
    other = load_config("digits", ["train.lr=0.0004"]).for_training_seed(0)
    with stage_run(other, "fid", arm="rfpp", seed=0) as run:
        run.log_summary({"fid_nfe1": 11.0})
        ids.append((run.run_id, run.arm_run_id, run.parent_run_id))
    assert ids[0][1] == ids[1][1] != ids[2][1] and all(arm == parent for _, arm, parent in ids)
    client = _client(store)
    arm_run = client.get_run(ids[0][1])
    assert arm_run.info.run_name == "rfpp-seed0" and arm_run.data.tags["rfpp.arm_run"] == "1"
    assert arm_run.data.params == arm_recipe(config, "rfpp", 0)
    assert arm_run.data.metrics == {"straightness_nfe1": 0.25, "fid_nfe1": 12.5}
    assert arm_run.data.tags["rfpp.code_versions"] == ",".join(sorted([code_version(), "9.9.9+" + code_version(
    ).split("+", 1)[1]]))
    assert client.get_run(ids[2][1]).data.metrics == {"fid_nfe1": 11.0}
    assert client.get_run(ids[2][1]).data.params["train.lr"] == "0.0004"
    session = {client.get_run(i).data.tags["mlflow.parentRunId"] for i in (ids[0][1], ids[2][1])}
    assert len(session) == 1 and client.get_run(session.pop()).data.tags["rfpp.parent"] == "1"
    stage = client.get_run(ids[1][0])
    assert stage.data.tags["mlflow.parentRunId"] == ids[0][1] and stage.data.params == arm_run.data.params
    assert "train.arms.baseline.loss" not in stage.data.params and "config.yaml" in {
        a.path for a in client.list_artifacts(stage.info.run_id)}
    for tag in ("mlflow.source.git.commit", "rfpp.git_dirty", "rfpp.profile_sha256"):
        assert arm_run.data.tags[tag] == stage.data.tags[tag] != ""
    digits = (ROOT / "params" / "digits.yaml").read_bytes()
    assert arm_run.data.tags["rfpp.profile_sha256"] == hashlib.sha256(digits).hexdigest()


ARM_STAGE_SCRIPT = textwrap.dedent("""
    import sys
    from rfpp.config import load_config
    from rfpp.tracking import stage_run

    config = load_config("digits").for_training_seed(0)
    with stage_run(config, sys.argv[1], arm="rfpp", seed=0) as run:
        run.log_summary({f"{sys.argv[1]}_done": 1.0})
    print(run.run_id, run.arm_run_id)
""")


@pytest.mark.slow
def test_stages_started_together_find_or_create_one_arm_run(tmp_path: Path) -> None:
    """Three stage processes of the same arm and seed started at once on a new SQLite store: one arm run, all three
    nested under it, each one's summary metric on it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
           "RFPP_TRACKING_GROUP": "together"}
    env.pop("RFPP_TRACKING", None)
    stages = [subprocess.Popen([sys.executable, "-c", ARM_STAGE_SCRIPT, stage], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for stage in ("train", "sample", "fid")]
    outputs = [stage.communicate(timeout=300) for stage in stages]
    for stage, (_out, errout) in zip(stages, outputs, strict=True):
        assert stage.returncode == 0, errout[-3000:]
    pairs = [out.split() for out, _ in outputs]
    assert len({arm for _, arm in pairs}) == 1
    client = _client(uri)
    experiment = client.get_experiment_by_name("rfpp-digits")
    arm_runs = client.search_runs([experiment.experiment_id], "tags.`rfpp.arm_run` = '1'")
    assert [r.info.run_id for r in arm_runs] == [pairs[0][1]]
    assert set(arm_runs[0].data.metrics) == {"train_done", "sample_done", "fid_done"}
    for run_id, arm in pairs:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == arm


def test_the_report_html_embeds_its_images(tmp_path: Path) -> None:
    """rfpp.report.html_page: report.md's tables as HTML, its images as data URIs (MLflow's viewer has no base URL)."""
    from rfpp.report import html_page

    (tmp_path / "report").mkdir()
    png = _png(tmp_path / "report" / "fid_vs_nfe.png")
    (tmp_path / "report.md").write_text("# rfpp report: profile `x`\n\n| arm | FID |\n|---|---|\n| rfpp | 1.5 |\n\n"
                                        "![FID vs NFE](report/fid_vs_nfe.png)\n\n![gone](report/missing.png)\n")
    page = html_page(tmp_path / "report.md")
    assert "<title>rfpp report: profile `x`</title>" in page.replace("&#96;", "`")
    assert "<table>" in page and "<td>rfpp</td>" in page and "<td>1.5</td>" in page
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="FID vs NFE"', page)
    assert [base64.b64decode(e) for e in embedded] == [png.read_bytes()]
    assert '<img src="report/missing.png"' in page  # a missing file stays a link
