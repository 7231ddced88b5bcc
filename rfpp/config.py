"""The one configuration object of a run: a profile (params/<profile>.yaml) plus dotted overrides.

A profile YAML has one section per pipeline stage. `load_config("digits", ["train.lr=1e-4"])` reads it,
applies the overrides, validates every key, type and range against the pydantic dataclasses below (the one
schema of a profile: `json_schema()` is what Snakemake and editors check params/*.yaml against), and returns a
frozen-by-convention `Config`. `Config.to_dict()` is what is saved beside every output and logged to MLflow.
Unknown keys, wrong types and out-of-range values raise `ConfigError`, one line naming the dotted key.

Types are strict (no "3" -> 3, no 1 -> true); a float accepts an int or a numeric string (YAML reads `1e-4`
as a string) and refuses inf/nan. The names a key may take come from the modules that act on them
(rfpp.timesteps, rfpp.losses.kinds, rfpp.sampling.kinds, rfpp.pairs.kinds, rfpp.train.kinds, rfpp.eval.kinds),
all importable without torch. `python -m rfpp.config --schema` prints the JSON schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import sys
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic import dataclasses as pydantic_dataclasses

from rfpp.eval.kinds import FEATURE_NETS, FORMATS
from rfpp.losses.kinds import HUBER_C_MODES, PERCEPTUAL_NETS
from rfpp.losses.kinds import KINDS as LOSSES
from rfpp.pairs.kinds import DTYPES, SAMPLERS
from rfpp.sampling.kinds import SOLVERS, T_START, UPDATES, check_t_start, steps_for_nfe
from rfpp.timesteps import KINDS as TIMESTEPS
from rfpp.train.kinds import INITS, NONFINITE, PRECISIONS

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"
NAME = r"^[A-Za-z0-9_.+-]+$"  # a profile's or an arm's name: it names a folder under results/
NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"  # a float written as a string, e.g. YAML's 1e-4


class ConfigError(ValueError):
    """A profile or override that does not fit the schema; the message names the key."""


def _number(value: Any) -> Any:
    """A float field's input: finite numbers and numeric strings pass on (as floats); booleans, inf, nan are refused."""
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


class _OrNumericString:
    """JSON schema of a float field: a number, or a string that reads as one (range keywords bind numbers only)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {**handler(core_schema), "type": ["number", "string"], "pattern": NUMBER}


def Num(*limits: Any) -> Any:  # noqa: N802 (a type, spelled like one)
    """A finite float field with annotated_types limits, e.g. Num(Gt(0), Lt(1))."""
    return Annotated[float, *limits, BeforeValidator(_number), _OrNumericString()]


def Int(*limits: Any) -> Any:  # noqa: N802
    """A strict int field (no bool, no "3") with annotated_types limits, e.g. Int(Ge(1))."""
    return Annotated[int, Strict(), *limits]


Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), StringConstraints(pattern=NAME)]
Float = Num()
Positive = Int(Ge(1))
NonNegative = Int(Ge(0))
Fraction = Num(Ge(0), Lt(1))  # in [0, 1)

_SECTION = ConfigDict(extra="forbid")
section = pydantic_dataclasses.dataclass(config=_SECTION)


@section
class DataConfig:
    """Training data: 'digits', an image folder, or an EDM dataset zip; images in [−1, 1]."""

    dataset: Str = "digits"
    resolution: Positive = 16


@section
class TeacherConfig:
    """Where the teacher comes from: 'train' (a 1-rectified flow trained here), an EDM snapshot name,
    or a path/URL. `net` holds EDM's constructor keyword arguments for a trained teacher. `grid` samples
    of `grid_nfe` Heun NFE (an even number is raised by one) make the preview teacher/samples.png."""

    source: Str = "train"
    arch: Str = "SongUNet"
    net: dict[str, Any] = field(default_factory=dict)
    steps: Positive = 2000
    batch: Positive = 64
    lr: Float = 2e-4
    ema: Float = 0.999
    sha256: Str | None = None
    grid: Positive = 64
    grid_nfe: Positive = 15


@section
class PairsConfig:
    """Pair generation: `count` pairs in `num_shards` shards; teacher sampler and its steps. `source`: a pair set
    made elsewhere (a folder with manifest.json: `rfpp import pairs`, or another profile's results/<p>/pairs)
    that training reads instead; the pipeline then makes no pairs and the other keys here are unused."""

    source: Str | None = None
    count: Positive = 4096
    num_shards: Positive = 4
    sampler: Literal[SAMPLERS] = "edm_heun"
    steps: Positive = 18
    dtype: Literal[DTYPES] = "float32"
    seed: Int() = 1
    batch: Positive = 256


@section
class ArmConfig:
    """One training arm: timestep distribution, loss and initialisation; `batch` overrides train.batch."""

    timesteps: Literal[TIMESTEPS] = "u_shaped"
    a: Num(Gt(0)) = 4.0
    loss: Literal[LOSSES] = "lpips-huber"
    init: Literal[INITS] = "teacher"
    huber_c: Literal[HUBER_C_MODES] = "reference"
    batch: Positive | None = None


@section
class TrainConfig:
    """One round of Reflow: optimisation settings shared by every arm. Each arm trains once per seed of `seeds`
    (its own job, student and scores; the teacher and the pairs are shared): the seed draws the student's data
    order, timesteps and dropout (and a scratch init)."""

    arms: Annotated[dict[Name, ArmConfig], MinLen(1)] = field(default_factory=lambda: {"rfpp": ArmConfig()})
    seeds: Annotated[list[NonNegative], MinLen(1)] = field(default_factory=lambda: [0])
    steps: Positive = 1000
    batch: Positive = 64
    lr: Num(Gt(0), Lt(1)) = 2e-4
    warmup: NonNegative = 100
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    eps: Num(Gt(0)) = 1e-8
    ema: Fraction = 0.999
    ema_start: NonNegative = 0
    grad_clip: Num(Gt(0)) | None = None  # null: no clipping
    dropout: Fraction = 0.0
    precision: Literal[PRECISIONS] = "fp32"
    compile: Bool = False
    ckpt_every: Positive = 500
    gpus: Positive = 1
    keep_last: Positive = 2
    perceptual: Literal[PERCEPTUAL_NETS] = "lpips-vgg16"
    micro_batch: Positive | None = None  # per-rank forward batch; None = batch / world size (no accumulation)
    num_workers: NonNegative = 2  # DataLoader workers per rank (they regenerate the noise)
    channels_last: Bool = False
    nonfinite: Literal[NONFINITE] = "stop"  # a NaN/inf loss: "stop" the run, or "skip" the update and count it
    keep_every: NonNegative = 0  # also keep every checkpoint whose step is a multiple of this (0: none)
    log_every: Positive = 10
    eval_every: NonNegative = 200  # straightness, sample grids, timestep histogram (0: only at the end)
    eval_batch: Positive = 64
    straightness_nfe: Positive = 8
    lpips_resize: Int(Ge(16)) | None = 224  # VGG16 LPIPS input size (224 the paper's; smaller for quick CPU runs)

    @model_validator(mode="after")
    def _micro_batch_fits(self) -> TrainConfig:
        """Each seed once; micro_batch ≤ every arm's batch (world-size divisibility is checked when a run starts)."""
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds: each seed once, got {self.seeds}")
        smallest = min((arm.batch or self.batch for arm in self.arms.values()), default=self.batch)
        if self.micro_batch is not None and self.micro_batch > smallest:
            raise ValueError(f"micro_batch: must be at most the batch ({smallest}), got {self.micro_batch}")
        return self


@section
class SampleConfig:
    """Few-step sampling for evaluation: the NFE sweep, solver, update rule, sample count and seed.

    `schedule` is an optional user time grid (descending, in [0, 1]) that replaces the default grid of
    `nfe`; `t_start` is the default grid's first point (the reference's 1 − 1e−5): a short training run
    seldom draws t that close to 1, so a small profile may start lower (docs/digits-findings.md);
    `format` is how samples are written (npz, a PNG folder or an EDM zip); `grid` is how many
    samples the PNG grid shows and `grid_scale` its integer magnification.
    """

    nfe: Annotated[list[Positive], MinLen(1)] = field(default_factory=lambda: [1, 2])
    solver: Literal[SOLVERS] = "euler"
    update: Literal[UPDATES] = "new"
    num_samples: Positive = 1000
    batch: Positive = 250
    seed: NonNegative = 0
    schedule: Annotated[list[Num(Ge(0), Le(1))], MinLen(1)] | None = None
    t_start: Num(Gt(0), Lt(1)) = T_START
    format: Literal[FORMATS] = "npz"
    grid: Positive = 64
    grid_scale: Positive = 1
    straightness_samples: NonNegative = 256

    @model_validator(mode="after")
    def _grid_fits(self) -> SampleConfig:
        """Heun spends odd NFEs; t_start lies above the second point of the largest NFE's grid; a schedule
        decreases strictly (and replaces the NFEs' default grids: their checks do not apply then)."""
        if len(set(self.nfe)) < len(self.nfe):
            raise ValueError(f"nfe: each NFE once, got {self.nfe}")
        if self.schedule is None:
            if self.solver == "heun" and any(n % 2 == 0 for n in self.nfe):
                raise ValueError(f"nfe: Heun needs odd NFEs, got {self.nfe}")
            try:
                check_t_start(self.t_start, max(steps_for_nfe(n, self.solver) for n in self.nfe))
            except ValueError as err:
                raise ValueError(f"t_start: {err} (sample.nfe {self.nfe}, solver {self.solver})") from None
        pts = self.schedule
        if pts is not None and any(b >= a for a, b in zip(pts, pts[1:], strict=False)):
            raise ValueError(f"schedule: must be strictly decreasing times in [0, 1], got {pts}")
        return self


@section
class EvalConfig:
    """FID protocol: feature network and reference statistics.

    `feature_net`: "inception" (torch-fidelity's inception-v3-compat) or "digits-classifier" (the digits
    profile's stand-in). `reference`: "dataset" (statistics computed from data.dataset), a URL or a path of
    an .npz with mu/sigma. `inception_weights`: a local path or URL of the Inception weights (default: the
    torch hub cache, downloading from torch-fidelity's URL if absent). `isc`/`kid`/`prc`: extra metrics.
    `feature_resolution`: the side the digits classifier is trained and run at (images are resized to it
    bilinearly, as LPIPS resizes to VGG's 224); None = data.resolution. `feature_steps`: its training steps
    (batch 64; 600 reach about 99% held-out accuracy on digits in seconds).
    """

    feature_net: Literal[FEATURE_NETS] = "inception"
    reference: Annotated[str, Strict(), MinLen(1)] = "dataset"
    num_samples: Positive = 1000
    reference_sha256: Str | None = None
    inception_weights: Str | None = None
    batch: Positive = 250
    isc: Bool = False
    kid: Bool = False
    prc: Bool = False
    kid_subset_size: Positive = 1000
    feature_resolution: Int(Ge(4)) | None = None
    feature_steps: Positive = 600


@section
class ReportConfig:
    """What the report compares: `compare` lists (arm, reference arm) pairs whose FIDs it differences seed by seed
    (mean ± sd of the paired difference, and whether its sign holds in every seed)."""

    compare: list[tuple[Name, Name]] = field(default_factory=list)


@pydantic_dataclasses.dataclass(config=ConfigDict(extra="forbid", json_schema_extra={
    "$schema": "https://json-schema.org/draft/2020-12/schema", "required": ["profile"],  # load_config's rule
    "description": "an rfpp profile, params/<profile>.yaml (made by `python -m rfpp.config --schema`)"}))
class Config:
    """The whole run configuration of a profile."""

    profile: Name = "digits"  # results/<profile>/
    seed: Int() = 0  # the teacher's and the feature classifier's training seed (a student's: train.seeds)
    device: Str = "auto"  # auto (a claimed GPU when there is one, else the CPU), cpu, cuda, cuda:1 …
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _compared_arms_exist(self) -> Config:
        for pair in self.report.compare:
            unknown = [arm for arm in pair if arm not in self.train.arms]
            if unknown or pair[0] == pair[1]:
                raise ValueError(f"report.compare: {list(pair)} must name two different arms of train.arms "
                                 f"({', '.join(self.train.arms)})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_training_seed(self, seed: int) -> Config:
        """This configuration as one training run sees it: `seed` and `train.seeds` = [seed] (what its checkpoints,
        student and fingerprint record, so that adding a seed to the profile leaves the other seeds' runs valid).
        ConfigError when `seed` is not one of train.seeds."""
        if seed not in self.train.seeds:
            raise ConfigError(f"training seed {seed} is not in train.seeds {self.train.seeds}; add it to the profile "
                              f"(e.g. train.seeds=[{', '.join(str(s) for s in [*self.train.seeds, seed])}])")
        return dataclasses.replace(self, seed=seed, train=dataclasses.replace(self.train, seeds=[seed]))

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)


_CONFIG = TypeAdapter(Config)


def json_schema() -> dict[str, Any]:
    """The JSON schema of a profile (workflow/schemas/params.schema.json is this, written by --schema)."""
    return _CONFIG.json_schema()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _section_at(loc: tuple[Any, ...]) -> Any:
    """The config class that holds the key at `loc` (arm names step through train.arms)."""
    cls: Any = Config
    for part in loc:
        if not dataclasses.is_dataclass(cls):  # a mapping of sections: `part` is its key
            cls = typing.get_args(cls)[1]
            continue
        hint = typing.get_type_hints(cls)[part]
        while typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        cls = hint
    while typing.get_origin(cls) is Annotated:
        cls = typing.get_args(cls)[0]
    return cls


def _dotted(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _range(loc: tuple[Any, ...]) -> str:
    """The allowed range of the number at `loc`, from its field's bounds: "in (0, 1)", "at least 1", "> 0" …"""
    while isinstance(loc[-1], int):  # an item of a list field: the bounds are the items'
        loc = loc[:-1]
    bounds: dict[type, Any] = {}
    todo = [typing.get_type_hints(_section_at(loc[:-1]), include_extras=True)[loc[-1]]]
    while todo:
        hint = todo.pop()
        todo.extend(typing.get_args(hint))
        bounds.update({type(m): m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Gt | Ge | Lt | Le)})
    low = ("(", bounds[Gt].gt) if Gt in bounds else ("[", bounds[Ge].ge) if Ge in bounds else None
    high = (")", bounds[Lt].lt) if Lt in bounds else ("]", bounds[Le].le) if Le in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"> {low[1]}" if low[0] == "(" else f"at least {low[1]}"
    return f"< {high[1]}" if high[0] == ")" else f"at most {high[1]}"


_EXPECTED = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a string",
             "float_type": "a number", "float_parsing": "a number", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping", "dataclass_type": "a mapping", "dataclass_args_type": "a mapping"}


def _one_line(err: ValidationError) -> str:
    """pydantic's first error as one line: the dotted key, the bad value and what is allowed."""
    e = err.errors()[0]
    loc, kind, value, ctx = e["loc"], e["type"], e.get("input"), e.get("ctx") or {}
    what = ""
    if loc and loc[-1] == "[key]":  # a mapping's key (an arm's name): name the mapping
        loc, what = loc[:-2], "key "
    elif kind == "missing" and loc and isinstance(loc[-1], int):  # a tuple given too few values
        return f"{_dotted(loc[:-1])}: too few values, got {value!r}"
    key = _dotted(loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        names = [f.name for f in dataclasses.fields(_section_at(loc[:-1]))]
        return f"unknown config key {key}; valid keys here: {', '.join(sorted(names))}"
    if kind == "literal_error":
        allowed = ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
        return f"{key}: {value!r} is not one of {allowed}"
    if kind in _EXPECTED:
        return f"{key}: {what}expected {_EXPECTED[kind]}, got {value!r}"
    if kind == "value_error":  # a validator's message: "<field>: why", or a float field's own
        why = str(ctx.get("error", e["msg"]))
        return f"{key}.{why}" if re.match(r"^\w+: ", why) else f"{key}: {why}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key}: must be {_range(loc)}, got {value!r}"
    limits = {"too_short": "at least {min_length} long",
              "string_too_short": "at least {min_length} character(s) long",
              "too_long": "at most {max_length} long", "finite_number": "a finite number",
              "string_pattern_mismatch": "a name matching {pattern}"}
    if kind in limits:
        return f"{key}: {what}must be {limits[kind].format(**ctx)}, got {value!r}"
    return f"{key}: {e['msg']}, got {value!r}"


def validate(values: dict[str, Any]) -> Config:
    """A profile's values (after overrides) as a Config, or ConfigError naming the first bad key."""
    try:
        return _CONFIG.validate_python(values)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


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
    return validate(values)


if __name__ == "__main__":  # python -m rfpp.config --schema > workflow/schemas/params.schema.json
    if sys.argv[1:] != ["--schema"]:
        sys.exit("usage: python -m rfpp.config --schema  (prints the JSON schema of a profile)")
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
