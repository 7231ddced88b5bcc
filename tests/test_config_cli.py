"""The configuration object and the CLI's common behaviour (profiles, overrides, dry runs, exit codes)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from rfpp.config import PARAMS_DIR, ConfigError, load_config

PROFILES = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates(profile):
    config = load_config(profile)
    assert config.profile == profile
    assert yaml.safe_load(config.to_yaml())["profile"] == profile


def test_overrides_are_typed_and_applied():
    config = load_config("digits", ["train.lr=1e-4", "train.arms.rfpp.a=2", "sample.nfe=[1,2,4]"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.train.arms["rfpp"].a == 2.0
    assert config.sample.nfe == [1, 2, 4]


@pytest.mark.parametrize(("override", "message"), [
    ("train.lrr=1", "unknown config key train.lrr"),
    ("train.steps=many", "train.steps: expected an integer"),
    ("train.arms.rfpp.loss=l3", "not one of"),
    ("train.arms.rfpp.timesteps=beta", "not one of"),
    ("train.lr=5", r"train.lr: must be in \(0, 1\)"),
    ("sample.nfe=[0]", r"sample.nfe\[0\]: must be at least 1"),
    ("train.lr=true", "train.lr: expected a number"),
    ("train.batch='3'", "train.batch: expected an integer"),
    ("train.compile=1", "train.compile: expected true or false"),
    ("train.micro_batch=1000", r"train.micro_batch: must be at most the batch \(64\)"),
    ("sample.solver=heun", "sample.nfe: Heun needs odd NFEs"),
    ("sample.t_start=0.4", "sample.t_start: t_start 0.4 must exceed the grid's second point 0.5"),
    ("nonsense", "must look like section.key=value"),
    ("train.arms.rfpp.a=nan", "train.arms.rfpp.a: must be a finite number"),
    ("train.lr=.inf", "train.lr: must be a finite number"),
    ("sample.t_start=nan", "sample.t_start: must be a finite number"),
    ("pairs.batch=0", "pairs.batch: must be at least 1"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits", [override])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles: .*digits"):
        load_config("no-such-profile")


def _rfpp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120)


def test_cli_dry_run_prints_resolved_config():
    result = _rfpp("train", "--profile", "digits", "--dry-run", "train.lr=3e-4")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["train"]["lr"] == pytest.approx(3e-4)


def test_cli_bad_override_exits_2_with_message():
    result = _rfpp("train", "--dry-run", "train.nope=1")
    assert result.returncode == 2
    assert "unknown config key train.nope" in result.stderr


def test_a_profile_file_must_name_its_profile(tmp_path):
    """No implicit `digits`: a profile file without `profile:` would have written into results/digits/."""
    data = yaml.safe_load((PARAMS_DIR / "digits.yaml").read_text())
    del data["profile"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="has no `profile:` key"):
        load_config(str(path))
    result = _rfpp("train", "--profile", str(path), "--restart")
    assert result.returncode == 2 and "has no `profile:` key" in result.stderr


def test_a_nan_setting_exits_2_naming_the_key():
    result = _rfpp("train", "--arm", "rfpp", "--restart", "train.arms.rfpp.a=nan")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: train.arms.rfpp.a: must be a finite number, got 'nan'"


def test_outputs_are_written_with_the_umask_mode(tmp_path):
    """Atomic writes give files the mode open() would (0666 less the umask), not mkstemp's 0600."""
    import os

    from rfpp.atomic import write_text

    old = os.umask(0o022)
    try:
        assert write_text(tmp_path / "a.txt", "x").stat().st_mode & 0o777 == 0o644
        os.umask(0o002)
        assert write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


@pytest.mark.parametrize(("stage", "folder"), [("train", "train"), ("teacher", "teacher")])
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, stage, folder):
    """results/digits/<folder> is a file: the stage stops at once (its output lock comes first) with one line."""
    (tmp_path / "results" / "digits").mkdir(parents=True)
    (tmp_path / "results" / "digits" / folder).write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "cli.main", stage, "--no-progress"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                             "RFPP_TRACKING": "off"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot make the folder results/digits/"), result.stderr
    assert "is in the way" in lines[0]
