"""The pipeline's DAG, stated once: Snakemake's rules and DVC's stages both come from `pipeline()`.

    teacher → [features] → pairs_shard × shards → pairs → train × arms × seeds → sample × arms × seeds
            → fid × arms × seeds → report

(no pair stages when pairs.source names a pair set made elsewhere: training reads its manifest). A sample job
makes one student's sets at every NFE of sample.nfe (the student read once) and a fid job scores them: one process
per arm and seed, not per NFE (each pays its imports, about 2 to 4 s of CPU, and a wait in a cluster's queue).

Each `Stage` holds the one command its jobs run (`rfpp <stage> --profile <params file> …`), what they read and
write (paths of rfpp.paths, with `{shard}`, `{arm}`, `{seed}` wildcards; seeds are train.seeds, shared
pairs and teacher), the values of those wildcards, and the
profile sections that re-run it (rfpp.provenance.STAGE_SECTIONS, the same lists the outputs' fingerprints hold).
workflow/rules/*.smk bind each rule to its stage; `rfpp dvc` writes dvc.yaml from the same list
(`dvc_yaml`). The features stage exists only when the digits classifier is used (train.perceptual or
eval.feature_net). `resume` makes training continue from an arm's checkpoints (`--resume`) instead of starting
over (`--restart`), in both tools alike.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfpp.config import Config
from rfpp.paths import ProfilePaths


@dataclass(frozen=True)
class Stage:
    """One rule of Snakemake, one (foreach/matrix) stage of DVC. `command`, `deps` and `outs` are patterns whose
    `{shard}`/`{arm}`/`{seed}` fields take the values of `over` (no fields: one job)."""

    name: str
    command: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    over: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    sections: str | None = None  # key of rfpp.provenance.STAGE_SECTIONS; None: no profile section
    gpu: int | None = None  # GPUs a job computes on when the profile runs on GPUs (None: never computes)
    metrics: tuple[str, ...] = ()  # outputs that are DVC metrics (FID json)
    plots: tuple[str, ...] = ()  # outputs that are DVC plots (the report's figures)

    def jobs(self) -> list[Job]:
        """Every job of this stage: its wildcard values and the patterns filled in."""
        names = list(self.over)
        out = []
        for values in itertools.product(*self.over.values()):
            wildcards = dict(zip(names, values, strict=True))
            out.append(Job(self.name, wildcards, self.command.format(**wildcards),
                           tuple(d.format(**wildcards) for d in self.deps),
                           tuple(o.format(**wildcards) for o in self.outs)))
        return out

    def snakemake_shell(self) -> str:
        """`command` for Snakemake's `shell:` (wildcards as `{wildcards.X}`); output also goes to the rule's log."""
        shell = self.command
        for w in self.over:
            shell = shell.replace(f"{{{w}}}", f"{{wildcards.{w}}}")
        return shell + " 2>&1 | tee {log}"

    def log(self, paths: ProfilePaths) -> str:
        return str(paths.log(self.name, *(f"{{{w}}}" for w in self.over)))


@dataclass(frozen=True)
class Job:
    """One concrete job: what both tools run."""

    stage: str
    wildcards: dict[str, Any]
    command: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def uses_classifier(config: Config) -> tuple[bool, bool]:
    """(training's perceptual network, FID's feature network) is the digits classifier of `rfpp features`."""
    return config.train.perceptual == "digits-classifier", config.eval.feature_net == "digits-classifier"


def pipeline(config: Config, params_file: str | Path, resume: bool = False) -> list[Stage]:
    """The stages of `config`'s pipeline, in order. `params_file`: the profile file every command reads (as given,
    relative to the project root or absolute)."""
    paths = ProfilePaths.of(config.profile)
    rfpp = f"--profile {_escape(shlex.quote(str(params_file)))}"
    arms, nfes = tuple(config.train.arms), tuple(int(k) for k in config.sample.nfe)
    seeds = tuple(int(k) for k in config.train.seeds)
    shards = tuple(range(config.pairs.num_shards))
    perceptual, fid_features = uses_classifier(config)
    teacher, features = str(paths.teacher), str(paths.features)
    manifest = str(paths.pair_set_manifest(config.pairs.source))
    shard = paths.shard_files("{shard}")
    student = str(paths.student("{arm}", "{seed}"))
    samples = [str(f) for k in nfes for f in paths.sample_files("{arm}", "{seed}", k).values()]
    sample_sets = tuple(str(paths.samples("{arm}", "{seed}", k)) for k in nfes)
    fids = tuple(str(paths.fid("{arm}", "{seed}", k)) for k in nfes)
    gpus = config.train.gpus
    train_cmd = ("rfpp train" if gpus == 1 else
                 f"python -m rfpp.devices --gpus {gpus} -- torchrun --standalone --nproc_per_node {gpus} "
                 f"-m cli.main train")
    trained_here = config.teacher.source == "train"

    stages = [Stage("teacher", f"rfpp teacher {rfpp} --no-progress", (), (teacher,), sections="teacher",
                    gpu=1 if trained_here else 0)]
    if perceptual or fid_features:
        stages.append(Stage("features", f"rfpp features {rfpp}", (), (features,), sections="features"))
    if not config.pairs.source:  # else training reads pairs.source's set: no pair stages
        stages += [
            Stage("pairs_shard", f"rfpp pairs {rfpp} --shard {{shard}} --num-shards {len(shards)} --no-progress",
                  (teacher,), (str(shard["record"]), str(shard["images"]), str(shard["labels"])),
                  {"shard": shards}, sections="pairs", gpu=1),
            Stage("pairs", f"rfpp pairs {rfpp} --finalize --num-shards {len(shards)}",
                  (teacher, *(str(paths.shard_record(k)) for k in shards)), (manifest,), sections="pairs"),
        ]
    stages += [
        Stage("train", f"{train_cmd} {rfpp} --arm {{arm}} --train-seed {{seed}} "
              f"{'--resume' if resume else '--restart'} --no-progress",
              (manifest, teacher, *([features] if perceptual else [])), (student,), {"arm": arms, "seed": seeds},
              sections="train", gpu=gpus),
        Stage("sample", f"rfpp sample {rfpp} --arm {{arm}} --train-seed {{seed}}", (student,), tuple(samples),
              {"arm": arms, "seed": seeds}, sections="sample", gpu=1),
        Stage("fid", f"rfpp fid {rfpp} --arm {{arm}} --train-seed {{seed}}",
              (*sample_sets, *([features] if fid_features else [])), fids,
              {"arm": arms, "seed": seeds}, sections="fid", gpu=1, metrics=fids),
        Stage("report", f"rfpp report {rfpp}",
              tuple(str(p) for a, s, k in itertools.product(arms, seeds, nfes)
                    for p in (paths.fid(a, s, k), paths.sample_files(a, s, k)["json"])),
              (str(paths.report), str(paths.report_dir)), plots=(str(paths.report_dir),)),
    ]
    return stages


def _escape(text: str) -> str:
    """Braces of a path doubled: commands are format patterns (Snakemake formats them again)."""
    return text.replace("{", "{{").replace("}", "}}")


def dvc_yaml(config: Config, params_file: str | Path, resume: bool = False) -> dict[str, Any]:
    """dvc.yaml's content for `config`'s pipeline: one stage per `Stage`, a `foreach` over its one wildcard or a
    `matrix` over more (DVC names the jobs `train@rfpp-0`, `sample@rfpp-0`), the profile sections as `params`, the
    FID json as metrics (cached: `dvc metrics diff` reads old revisions from the cache) and the report's figures
    as plots."""
    from rfpp.provenance import STAGE_SECTIONS

    stages: dict[str, Any] = {}
    described = pipeline(config, params_file, resume)
    for stage in described:
        names = list(stage.over)
        if len(names) == 1:
            fields = {names[0]: "${item}"}
        else:
            fields = {w: f"${{item.{w}}}" for w in names}
        body: dict[str, Any] = {"cmd": stage.command.format(**fields)}
        if stage.deps:
            body["deps"] = [d.format(**fields) for d in stage.deps]
        if stage.sections:
            body["params"] = [{str(params_file): list(STAGE_SECTIONS[stage.sections])}]
        outs = [o.format(**fields) for o in stage.outs if o not in stage.metrics]
        if outs:
            body["outs"] = outs
        if stage.metrics:
            body["metrics"] = [m.format(**fields) for m in stage.metrics]
        if len(names) == 1:
            stages[stage.name] = {"foreach": list(stage.over[names[0]]), "do": body}
        elif names:
            stages[stage.name] = {"matrix": {w: list(v) for w, v in stage.over.items()}, **body}
        else:
            stages[stage.name] = body
    plots = [p for stage in described for p in stage.plots]
    return {"stages": stages, "plots": plots}
