"""The one configuration object of a run: a profile (params/<profile>.yaml) plus dotted overrides.

A profile YAML has one section per pipeline stage. `load_config("digits", ["train.lr=1e-4"])` reads it,
applies the overrides, validates every key and type against the dataclasses below, and returns a
frozen-by-convention `Config`. `Config.to_dict()` is what is saved beside every output and logged to
MLflow. Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"


class ConfigError(ValueError):
    """A profile or override that does not fit the schema; the message names the key."""


@dataclass
class DataConfig:
    """Training data: 'digits', an image folder, or an EDM dataset zip; images in [−1, 1]."""

    dataset: str = "digits"
    resolution: int = 16


@dataclass
class TeacherConfig:
    """Where the teacher comes from: 'train' (a 1-rectified flow trained here), an EDM snapshot name,
    or a path/URL. `net` holds EDM's constructor keyword arguments for a trained teacher."""

    source: str = "train"
    arch: str = "SongUNet"
    net: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-4
    ema: float = 0.999
    sha256: str | None = None


@dataclass
class PairsConfig:
    """Pair generation: `count` pairs in `num_shards` shards; teacher sampler and its steps."""

    count: int = 4096
    num_shards: int = 4
    sampler: str = "edm_heun"
    steps: int = 18
    dtype: str = "float32"
    seed: int = 1
    batch: int = 256


@dataclass
class ArmConfig:
    """One training arm: timestep distribution, loss and initialisation."""

    timesteps: str = "u_shaped"
    a: float = 4.0
    loss: str = "lpips-huber"
    init: str = "teacher"
    huber_c: str = "reference"


@dataclass
class TrainConfig:
    """One round of Reflow: optimisation settings shared by every arm."""

    arms: dict[str, ArmConfig] = field(default_factory=lambda: {"rfpp": ArmConfig()})
    steps: int = 1000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 100
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    ema: float = 0.999
    ema_start: int = 0
    grad_clip: float | None = None
    dropout: float = 0.0
    precision: str = "fp32"
    compile: bool = False
    ckpt_every: int = 500
    keep_last: int = 2
    perceptual: str = "lpips-vgg16"


@dataclass
class SampleConfig:
    """Few-step sampling for evaluation."""

    nfe: list[int] = field(default_factory=lambda: [1, 2])
    solver: str = "euler"
    update: str = "new"
    num_samples: int = 1000
    batch: int = 250
    seed: int = 0


@dataclass
class EvalConfig:
    """FID protocol: feature network and reference statistics."""

    feature_net: str = "inception"
    reference: str = "dataset"
    num_samples: int = 1000


@dataclass
class Config:
    """The whole run configuration of a profile."""

    profile: str = "digits"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`, converting only where no information is lost."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(hint)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=True)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]!s}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key part")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return values


def profile_path(profile: str) -> Path:
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        return path
    return PARAMS_DIR / f"{profile}.yaml"


def load_config(profile: str = "digits", overrides: list[str] | None = None) -> Config:
    """Read params/<profile>.yaml (or a YAML path), apply dotted overrides, validate, return a Config."""
    path = profile_path(profile)
    if not path.exists():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {profile!r} not found at {path}; known profiles: {', '.join(known)}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    values = apply_overrides(values, list(overrides or []))
    config = _build(Config, values, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range checks that the type system cannot express."""
    from rfpp.timesteps import KINDS

    losses = ("l2", "l2-squared", "pseudo-huber", "lpips", "lpips-huber", "lpips-huber-1/t")
    for name, arm in config.train.arms.items():
        if arm.timesteps not in KINDS:
            raise ConfigError(f"train.arms.{name}.timesteps: {arm.timesteps!r} is not one of {', '.join(KINDS)}")
        if arm.loss not in losses:
            raise ConfigError(f"train.arms.{name}.loss: {arm.loss!r} is not one of {', '.join(losses)}")
        if arm.init not in ("teacher", "scratch"):
            raise ConfigError(f"train.arms.{name}.init: must be 'teacher' or 'scratch', not {arm.init!r}")
        if arm.a <= 0:
            raise ConfigError(f"train.arms.{name}.a: must be > 0, got {arm.a}")
    positive = {"pairs.count": config.pairs.count, "pairs.num_shards": config.pairs.num_shards,
                "train.steps": config.train.steps, "train.batch": config.train.batch,
                "sample.num_samples": config.sample.num_samples, "data.resolution": config.data.resolution}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if not 0 < config.train.lr < 1:
        raise ConfigError(f"train.lr: must be in (0, 1), got {config.train.lr}")
    if not 0 <= config.train.ema < 1:
        raise ConfigError(f"train.ema: must be in [0, 1), got {config.train.ema}")
    if config.pairs.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"pairs.dtype: must be float32, bfloat16 or float16, not {config.pairs.dtype!r}")
    if config.train.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: must be fp32, bf16 or fp16, not {config.train.precision!r}")
    if any(n < 1 for n in config.sample.nfe):
        raise ConfigError(f"sample.nfe: every NFE must be at least 1, got {config.sample.nfe}")
