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
    ("sample.nfe=[0]", "every NFE must be at least 1"),
    ("nonsense", "must look like section.key=value"),
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
