"""The one configuration object of a run: a profile (params/<profile>.yaml) plus dotted overrides.

A profile YAML has one section per pipeline stage. `load_config("digits", ["train.lr=1e-4"])` reads it,
applies the overrides, validates every key and type against the dataclasses below, and returns a
frozen-by-convention `Config`. `Config.to_dict()` is what is saved beside every output and logged to
MLflow. Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
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
    or a path/URL. `net` holds EDM's constructor keyword arguments for a trained teacher. `grid` samples
    of `grid_nfe` Heun NFE (an even number is raised by one) make the preview teacher/samples.png."""

    source: str = "train"
    arch: str = "SongUNet"
    net: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-4
    ema: float = 0.999
    sha256: str | None = None
    grid: int = 64
    grid_nfe: int = 15


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
    """One training arm: timestep distribution, loss and initialisation; `batch` overrides train.batch."""

    timesteps: str = "u_shaped"
    a: float = 4.0
    loss: str = "lpips-huber"
    init: str = "teacher"
    huber_c: str = "reference"
    batch: int | None = None


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
    gpus: int = 1
    keep_last: int = 2
    perceptual: str = "lpips-vgg16"
    micro_batch: int | None = None  # per-rank forward batch; None = batch / world size (no accumulation)
    num_workers: int = 2  # DataLoader workers per rank (they regenerate the noise)
    channels_last: bool = False
    nonfinite: str = "stop"  # a NaN/inf loss: "stop" the run, or "skip" the update and count it
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: none)
    log_every: int = 10
    eval_every: int = 200  # straightness, sample grids, timestep histogram (0: only at the end)
    eval_batch: int = 64
    straightness_nfe: int = 8
    lpips_resize: int | None = 224  # VGG16 LPIPS input size (224 the paper's; smaller for quick CPU runs; null: none)


@dataclass
class SampleConfig:
    """Few-step sampling for evaluation: the NFE sweep, solver, update rule, sample count and seed.

    `schedule` is an optional user time grid (descending, in (0, 1]) that replaces the default grid of
    `nfe`; `t_start` is the default grid's first point (the reference's 1 − 1e−5): a short training run
    seldom draws t that close to 1, so a small profile may start lower (docs/digits-findings.md);
    `format` is how samples are written (npz, a PNG folder or an EDM zip); `grid` is how many
    samples the PNG grid shows and `grid_scale` its integer magnification.
    """

    nfe: list[int] = field(default_factory=lambda: [1, 2])
    solver: str = "euler"
    update: str = "new"
    num_samples: int = 1000
    batch: int = 250
    seed: int = 0
    schedule: list[float] | None = None
    t_start: float = 1 - 1e-5
    format: str = "npz"
    grid: int = 64
    grid_scale: int = 1
    straightness_samples: int = 256


@dataclass
class EvalConfig:
    """FID protocol: feature network and reference statistics.

    `feature_net`: "inception" (torch-fidelity's inception-v3-compat) or "digits-classifier" (the digits
    profile's stand-in). `reference`: "dataset" (statistics computed from data.dataset), a URL or a path of
    an .npz with mu/sigma. `inception_weights`: a local path or URL of the Inception weights (default: the
    torch hub cache, downloading from torch-fidelity's URL if absent). `isc`/`kid`/`prc`: extra metrics.
    `feature_resolution`: the side the digits classifier is trained and run at (images are resized to it
    bilinearly, as LPIPS resizes to VGG's 224); None = data.resolution.
    """

    feature_net: str = "inception"
    reference: str = "dataset"
    num_samples: int = 1000
    reference_sha256: str | None = None
    inception_weights: str | None = None
    batch: int = 250
    isc: bool = False
    kid: bool = False
    prc: bool = False
    kid_subset_size: int = 1000
    feature_resolution: int | None = None


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
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
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
    if not values.get("profile"):
        raise ConfigError(f"{path} has no `profile:` key; add `profile: <name>` (it names results/<name>/)")
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
        if arm.batch is not None and arm.batch < 1:
            raise ConfigError(f"train.arms.{name}.batch: must be at least 1, got {arm.batch}")
        if arm.a <= 0:
            raise ConfigError(f"train.arms.{name}.a: must be > 0, got {arm.a}")
    positive = {"teacher.grid": config.teacher.grid, "teacher.grid_nfe": config.teacher.grid_nfe,
                "pairs.count": config.pairs.count, "pairs.num_shards": config.pairs.num_shards,
                "pairs.batch": config.pairs.batch, "pairs.steps": config.pairs.steps,
                "train.steps": config.train.steps, "train.batch": config.train.batch,
                "sample.num_samples": config.sample.num_samples, "data.resolution": config.data.resolution}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if config.eval.feature_resolution is not None and config.eval.feature_resolution < 4:
        raise ConfigError(f"eval.feature_resolution: must be at least 4, got {config.eval.feature_resolution}")
    if config.train.gpus < 1:
        raise ConfigError(f"train.gpus: must be at least 1, got {config.train.gpus}")
    if not 0 < config.train.lr < 1:
        raise ConfigError(f"train.lr: must be in (0, 1), got {config.train.lr}")
    if not 0 <= config.train.ema < 1:
        raise ConfigError(f"train.ema: must be in [0, 1), got {config.train.ema}")
    if config.pairs.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"pairs.dtype: must be float32, bfloat16 or float16, not {config.pairs.dtype!r}")
    if config.train.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: must be fp32, bf16 or fp16, not {config.train.precision!r}")
    _validate_train(config.train)
    if any(n < 1 for n in config.sample.nfe):
        raise ConfigError(f"sample.nfe: every NFE must be at least 1, got {config.sample.nfe}")
    _validate_sample_eval(config)


def _validate_sample_eval(config: Config) -> None:
    """Range checks of the sample: and eval: sections."""
    sample, ev = config.sample, config.eval
    if sample.solver not in ("euler", "heun"):
        raise ConfigError(f"sample.solver: must be euler or heun, not {sample.solver!r}")
    if sample.update not in ("default", "new"):
        raise ConfigError(f"sample.update: must be default or new, not {sample.update!r}")
    if sample.solver == "heun" and sample.schedule is None and any(n % 2 == 0 for n in sample.nfe):
        raise ConfigError(f"sample.nfe: Heun needs odd NFEs, got {sample.nfe}")
    if sample.format not in ("npz", "png", "zip"):
        raise ConfigError(f"sample.format: must be npz, png or zip, not {sample.format!r}")
    from rfpp.sampling.grids import check_t_start, steps_for_nfe

    try:
        max_steps = max([steps_for_nfe(n, sample.solver) for n in sample.nfe], default=1)
        check_t_start(sample.t_start, max_steps)
    except ValueError as err:
        raise ConfigError(f"sample.t_start: {err} (sample.nfe {sample.nfe}, solver {sample.solver})") from None
    if sample.schedule is not None:
        pts = sample.schedule
        if not pts or any(not 0 <= t <= 1 for t in pts) or any(b >= a for a, b in zip(pts, pts[1:], strict=False)):
            raise ConfigError(f"sample.schedule: must be strictly decreasing times in (0, 1], got {pts}")
    for key, value in {"sample.batch": sample.batch, "sample.grid": sample.grid, "sample.grid_scale":
                       sample.grid_scale, "eval.num_samples": ev.num_samples, "eval.batch": ev.batch,
                       "eval.kid_subset_size": ev.kid_subset_size}.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if sample.seed < 0 or sample.straightness_samples < 0:
        raise ConfigError("sample.seed and sample.straightness_samples must be non-negative")
    if ev.feature_net not in ("inception", "digits-classifier"):
        raise ConfigError(f"eval.feature_net: must be inception or digits-classifier, not {ev.feature_net!r}")
    if not ev.reference:
        raise ConfigError("eval.reference: must be 'dataset', a URL or a path of an .npz with mu and sigma")


PERCEPTUAL_NETS = ("lpips-vgg16", "lpips-vgg16-maxpool", "digits-classifier")


def _validate_train(train: TrainConfig) -> None:
    """Range checks of the training section (world-size divisibility is checked when a run starts)."""
    for key in ("ckpt_every", "keep_last", "log_every", "eval_batch", "straightness_nfe"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be at least 1, got {getattr(train, key)}")
    for key in ("warmup", "ema_start", "num_workers", "keep_every", "eval_every"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key}: must be at least 0, got {getattr(train, key)}")
    if train.micro_batch is not None and not 1 <= train.micro_batch <= train.batch:
        raise ConfigError(f"train.micro_batch: must be in [1, train.batch={train.batch}], got {train.micro_batch}")
    if not all(0 <= b < 1 for b in train.betas):
        raise ConfigError(f"train.betas: each must be in [0, 1), got {list(train.betas)}")
    if not train.eps > 0:
        raise ConfigError(f"train.eps: must be > 0, got {train.eps}")
    if train.grad_clip is not None and not train.grad_clip > 0:
        raise ConfigError(f"train.grad_clip: must be > 0 (or null for no clipping), got {train.grad_clip}")
    if not 0 <= train.dropout < 1:
        raise ConfigError(f"train.dropout: must be in [0, 1), got {train.dropout}")
    if train.lpips_resize is not None and train.lpips_resize < 16:
        raise ConfigError(f"train.lpips_resize: must be at least 16 (or null), got {train.lpips_resize}")
    if train.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"train.nonfinite: must be 'stop' or 'skip', not {train.nonfinite!r}")
    if train.perceptual not in PERCEPTUAL_NETS:
        raise ConfigError(f"train.perceptual: {train.perceptual!r} is not one of {', '.join(PERCEPTUAL_NETS)}")
    for name, arm in train.arms.items():
        if arm.huber_c not in ("reference", "ict"):
            raise ConfigError(f"train.arms.{name}.huber_c: must be 'reference' or 'ict', not {arm.huber_c!r}")
