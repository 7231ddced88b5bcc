"""The workflow layer: profiles vs schema, Snakemake dry runs (local and Slurm), Snakefile == dvc.yaml, real runs.

Real Snakemake/DVC runs of the first stages (teacher, pairs) use a tiny copy of the digits profile in a temporary
directory; they are marked slow (CI runs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from workflow_helpers import DVC, ROOT, SNAKEMAKE, dry_run_jobs, make_workspace
from workflow_helpers import run as _run

PROFILES = sorted(p.stem for p in (ROOT / "params").glob("*.yaml"))


def tiny_profile(name: str = "tiny") -> dict:
    """The digits profile shrunk to seconds: a 2-step teacher, 64 pairs in 2 shards of two 16-pair chunks, a
    200-step classifier."""
    p = yaml.safe_load((ROOT / "params" / "digits.yaml").read_text())
    p["profile"] = name
    p["teacher"]["net"].update(model_channels=8, channel_mult=[1])
    p["teacher"].update(steps=2, batch=16)
    p["pairs"].update(count=64, num_shards=2, steps=3, batch=16)
    p["train"].update(steps=4, batch=16, warmup=1, eval_every=0, seeds=[0])  # one training seed (DVC's test: two)
    p["sample"].update(num_samples=32, batch=32, grid=16)
    p["eval"].update(num_samples=32, feature_steps=200)  # the classifier: 200 steps reach ~95% held-out accuracy
    return p


# ------------------------------------------------------------------------------------------------ profiles


SCHEMA = ROOT / "workflow" / "schemas" / "params.schema.json"


def test_the_committed_schema_is_made_from_rfpp_config():
    """params.schema.json is `python -m rfpp.config --schema`: editing a model without regenerating fails here."""
    from rfpp.config import json_schema

    assert json.loads(SCHEMA.read_text()) == json_schema(), f"regenerate: python -m rfpp.config --schema > {SCHEMA}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_fits_the_schema_and_the_config(profile):
    from snakemake.utils import validate

    from rfpp.config import load_config

    data = yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())
    validate(data, str(SCHEMA), set_default=False)
    assert load_config(profile).profile == profile  # results/<profile> matches the file name


@pytest.mark.parametrize(("key", "value"), [
    ("train.arms.rfpp.los", "l2"),  # an unknown key
    ("train.batch", "64"),  # a string for an integer
    ("train.compile", 1),  # an integer for a boolean
    ("train.lr", 1.5),  # out of range
    ("pairs.num_shards", 0),
    ("train.arms.rfpp.loss", "l3"),  # not one of rfpp.losses.kinds.KINDS
    ("sample.nfe", []),
    ("train.betas", [0.9]),
])
def test_the_schema_and_the_config_refuse_the_same_mistakes(tmp_path, key, value):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from rfpp.config import ConfigError, load_config

    data = yaml.safe_load((ROOT / "params" / "digits.yaml").read_text())
    *sections, last = key.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
    with pytest.raises(WorkflowError):
        validate(data, str(SCHEMA), set_default=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(str(path))


def test_the_schema_takes_a_float_written_as_yaml_reads_1e_4():
    """YAML reads `1e-4` as a string; rfpp.config takes it as a number, and so does the schema."""
    from snakemake.utils import validate

    data = yaml.safe_load((ROOT / "params" / "digits.yaml").read_text())
    data["train"]["lr"] = yaml.safe_load("1e-4")
    assert data["train"]["lr"] == "1e-4"
    validate(data, str(SCHEMA), set_default=False)


def test_the_ladder_climbs_one_change_at_a_time():
    arms = yaml.safe_load((ROOT / "params" / "digits-ladder.yaml").read_text())["train"]["arms"]
    assert [a[0] for a in arms] == list("ABCDEF")
    steps = [(a.get("timesteps"), a.get("loss"), a.get("init")) for a in arms.values()]
    assert steps == [("uniform", "l2-squared", "teacher"), ("uniform", "l2-squared", "teacher"),
                     ("u_shaped", "l2-squared", "teacher"), ("u_shaped", "pseudo-huber", "teacher"),
                     ("u_shaped", "lpips-huber", "teacher"), ("u_shaped", "lpips-huber-1/t", "teacher")]


# ----------------------------------------------------------------------------------------- Snakemake dry runs


@pytest.mark.parametrize("profile", ["digits", "cifar10"])
def test_dry_run(profile):
    params = yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())
    jobs = dry_run_jobs("--config", f"profile={profile}")
    count = {}
    for job in jobs:
        count[job["rule"]] = count.get(job["rule"], 0) + 1
    arms, nfes = len(params["train"]["arms"]), len(params["sample"]["nfe"])
    seeds = len(params["train"].get("seeds", [0]))  # a job per arm and training seed (digits: three seeds)
    digits = params["eval"]["feature_net"] == "digits-classifier"
    assert count == {"teacher": 1, "pairs_shard": params["pairs"]["num_shards"], "pairs": 1, "train": arms * seeds,
                     "sample": arms * seeds, "fid": arms * seeds, "report": 1, "all": 1,
                     **({"features": 1} if digits else {})}
    # one sample and one fid job per arm and seed, each with every NFE's outputs
    for rule, per_nfe in (("sample", 3), ("fid", 1)):
        outs = [j["output"] for j in jobs if j["rule"] == rule]
        assert all(len(o) == per_nfe * nfes for o in outs), outs
        assert all(f"nfe{k}" in " ".join(o) for o in outs for k in params["sample"]["nfe"])
    trained = sorted(o for j in jobs if j["rule"] == "train" for o in j["output"])
    assert trained == sorted(f"results/{profile}/train/{a}/seed{k}/final.pt" for a in params["train"]["arms"]
                             for k in params["train"].get("seeds", [0]))
    for job in jobs:
        if job["rule"] in ("pairs_shard", "sample", "fid", "train"):
            assert job["resources"].get("gpu") == "1", job
        if job["rule"] in ("pairs", "report", "features"):
            assert "gpu" not in job["resources"], job
        if job["rule"] != "all":
            assert job["shell"].startswith(f"rfpp {job['rule'].removesuffix('_shard')} "
                                           f"--profile params/{profile}.yaml"), job
    shard_outs = sorted(o for j in jobs if j["rule"] == "pairs_shard" for o in j["output"] if o.endswith(".json"))
    assert shard_outs == sorted(f"results/{profile}/pairs/shard-{k}.json" for k in range(params["pairs"]["num_shards"]))
    assert [j["output"] for j in jobs if j["rule"] == "report"] == [[f"results/{profile}/report.md",
                                                                     f"results/{profile}/report"]]


def test_multi_gpu_training_claims_its_gpus_and_runs_torchrun(tmp_path):
    profile = tiny_profile("quad")
    profile["train"]["gpus"] = 4
    path = tmp_path / "quad.yaml"
    path.write_text(yaml.safe_dump(profile))
    train = [j for j in dry_run_jobs("--config", f"params={path}") if j["rule"] == "train"]
    assert len(train) == 2
    for job in train:
        assert job["resources"]["gpu"] == "4"
        assert job["shell"].startswith(f"python -m rfpp.devices --gpus 4 -- torchrun --standalone --nproc_per_node 4 "
                                       f"-m cli.main train --profile {path} --arm ")
    resumed = [j for j in dry_run_jobs("--config", f"params={path}", "resume=true") if j["rule"] == "train"]
    assert all(" --resume --no-progress 2>&1 | tee " in j["shell"] for j in resumed)


def test_a_params_path_with_a_space_is_quoted_in_every_command(tmp_path):
    """`--config params='my profiles/x.yaml'`: each job's command passes the path as one argument."""
    import shlex

    folder = tmp_path / "my profiles"
    folder.mkdir()
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_profile()))
    jobs = dry_run_jobs("--config", f"params={path}")
    assert {j["rule"] for j in jobs} >= {"teacher", "pairs_shard", "train", "sample", "fid", "report"}
    for job in (j for j in jobs if j["rule"] != "all"):
        words = shlex.split(job["shell"])
        assert words[words.index("--profile") + 1] == str(path), job["shell"]


@pytest.mark.xdist_group("slurm")  # never beside tests/test_slurm.py's running cluster, whose checks it would meet
def test_slurm_profile_dry_run_and_submit_arguments():
    """The Slurm profile dry-runs without any Slurm (Snakemake's dry run never starts the executor, and the site
    checks are skipped where no Slurm configuration is found), and each job's resources, derived from
    workflow/profiles/slurm/site.yaml, turn into the sbatch arguments the plugin would use (tests/test_slurm.py
    checks the requests in detail)."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    jobs = dry_run_jobs("--profile", "workflow/profiles/slurm", "--config", "profile=cifar10")
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    site = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "site.yaml").read_text())["slurm"]
    assert profile["executor"] == "slurm"
    # Only resource names the plugin reads (utils/submit_string/partitions), and Snakemake's own.
    known = {"slurm_partition", "slurm_account", "runtime", "mem_mb", "mem_mb_per_cpu", "cpus_per_task", "gpu",
             "gpu_model", "gres", "constraint", "qos", "nodes", "tasks", "slurm_extra", "tmpdir", "mem", "mem_mib"}
    for job in jobs:
        if job["rule"] == "all":
            continue
        res = job["resources"]
        assert set(res) <= known, job
        assert res["slurm_partition"] == site["partition"] and int(res["runtime"]) > 0 and int(res["mem_mb"]) > 0
        resources = SimpleNamespace(**{k: int(v) if v.isdigit() else v for k, v in res.items()})
        resources.get = lambda key, default=None, r=resources: getattr(r, key, default)
        gres = set_gres_string(SimpleNamespace(resources=resources))
        wants_gpu = job["rule"] in ("pairs_shard", "train", "sample", "fid")
        assert gres.strip() == ("--gpus=1" if wants_gpu else ""), job
    train = next(j for j in jobs if j["rule"] == "train")
    assert train["resources"]["runtime"] == str(site["runtime"]["train"])


# ------------------------------------------------------------------------------- Snakefile == dvc.yaml


def dvc_stages(repo_dir: Path = ROOT) -> dict[str, dict]:
    """dvc.yaml's stages with vars, foreach and matrix resolved, through DVC's own loader."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    root = str(repo_dir)
    with Repo(root) as repo:
        out = {}
        for stage in repo.index.stages:
            rel = lambda p: os.path.relpath(str(p.fs_path), root)  # noqa: E731
            params = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params[rel(dep)] = sorted(dep.params)
            out[stage.name] = {
                "cmd": stage.cmd,
                "deps": sorted(rel(d) for d in stage.deps if not isinstance(d, ParamsDependency)),
                "outs": sorted(rel(o) for o in stage.outs),
                "metrics": sorted(rel(o) for o in stage.outs if o.metric),
                "params": params,
            }
    return out


def snakemake_jobs(*config: str, cwd: Path = ROOT) -> set[tuple]:
    """Every job of Snakemake's dry run as (rule, command without the log's tee, inputs, outputs)."""
    out = set()
    for job in dry_run_jobs("--config", *config, cwd=cwd):
        if job["rule"] != "all":
            command = re.sub(r" 2>&1 \| tee \S+$", "", job["shell"])
            out.add((job["rule"], command, tuple(sorted(job["input"])), tuple(sorted(job["output"]))))
    return out


def dvc_jobs(work: Path) -> set[tuple]:
    """Every job of dvc.yaml, resolved by DVC, as (stage, command, deps, outs incl. metrics)."""
    return {(name.split("@")[0], s["cmd"], tuple(s["deps"]), tuple(s["outs"])) for name, s in dvc_stages(work).items()}


@pytest.fixture(scope="module")
def profiles_project(tmp_path_factory) -> Path:
    """A DVC project holding the workflow and every profile of params/."""
    work = make_workspace(tmp_path_factory.mktemp("profiles"),
                          {p: yaml.safe_load((ROOT / "params" / f"{p}.yaml").read_text()) for p in PROFILES})
    _run([DVC, "init", "--no-scm", "-q"], cwd=work)
    return work


@pytest.mark.parametrize("profile", PROFILES)
def test_snakemake_and_dvc_make_the_same_jobs_for_every_profile(profile, profiles_project):
    """`rfpp dvc --profile P` writes the dvc.yaml whose jobs (stage, arm, seed, NFE, shard) are Snakemake's for P, with
    the same commands, inputs and outputs; both come from rfpp.dag."""
    work = profiles_project
    _run(["rfpp", "dvc", "--profile", profile], cwd=work)
    smk, dvc = snakemake_jobs(f"profile={profile}", cwd=work), dvc_jobs(work)
    assert smk == dvc, f"only Snakemake: {sorted(smk - dvc)}\nonly DVC: {sorted(dvc - smk)}"
    dry = _run([DVC, "repro", "--dry", "--force"], cwd=work)  # what `dvc repro` would run, in its order
    ran = re.findall(r"^Running stage '([^']+)':\n> (.*)$", dry, re.M)
    assert sorted(cmd for _, cmd in ran) == sorted(job[1] for job in smk), dry[-2000:]
    assert [stage for stage, _ in ran][0] == "teacher" and ran[-1][0] == "report"
    params = yaml.safe_load((work / "params" / f"{profile}.yaml").read_text())
    shards = [j for j in dvc if j[0] == "pairs_shard"]
    assert len(shards) == params["pairs"]["num_shards"]  # e.g. cifar10's shards, no list kept by hand
    seeds = params["train"].get("seeds", [0])  # a job per arm and training seed, each scoring every NFE
    assert len([j for j in dvc if j[0] == "fid"]) == len(params["train"]["arms"]) * len(seeds)
    assert {j[1].split(" --train-seed ")[1].split()[0] for j in dvc if j[0] == "train"} == {str(k) for k in seeds}


def test_resume_means_the_same_in_both(tmp_path):
    """`snakemake --config resume=true` and `rfpp dvc --resume` both make training continue (--resume); without
    it both start over (--restart)."""
    work = make_workspace(tmp_path, {"tiny": tiny_profile()})
    _run([DVC, "init", "--no-scm", "-q"], cwd=work)
    for resume, flag in ((False, "--restart"), (True, "--resume")):
        _run(["rfpp", "dvc", "--profile", "tiny", *(["--resume"] if resume else [])], cwd=work)
        smk = snakemake_jobs("profile=tiny", *(["resume=true"] if resume else []), cwd=work)
        assert smk == dvc_jobs(work)
        train = [j[1] for j in smk if j[0] == "train"]
        assert len(train) == 2 and all(f" {flag} " in cmd for cmd in train), train


def test_the_committed_dvc_yaml_is_the_digits_pipeline(tmp_path):
    """dvc.yaml in the repository is what `rfpp dvc --profile digits` writes (nobody edited it by hand, and the
    description did not change without it)."""
    _run(["rfpp", "dvc", "--profile", "digits", "--out", str(tmp_path / "dvc.yaml")])
    assert (tmp_path / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text(), "run `rfpp dvc --profile digits`"


def test_each_rule_reruns_on_its_stage_sections():
    """Each rule's params are the profile keys of its own stage (rfpp.dag → rfpp.provenance.trigger_keys), the ones
    its DVC stage lists and its outputs' fingerprints hold."""
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    rules = re.findall(r'^\s*rule (\w+):.*?(?=^\s*rule |\Z)', text, re.S | re.M)
    assert sorted(rules) == sorted(["teacher", "features", "pairs_shard", "pairs", "train", "sample", "fid",
                                    "report"])
    for block in re.split(r"(?m)^\s*rule ", text)[1:]:
        name = block.split(":", 1)[0]
        assert f'STAGES["{name}"]' in block and "log:" in block, name
        if name != "report":
            assert f'sections=section("{name}")' in block, name


def test_snakemake_lint_is_clean():
    out = _run([SNAKEMAKE, "--lint", "--config", "profile=digits"])
    assert "Congratulations, your workflow is in a good condition!" in out, out


# ------------------------------------------------------------------------------------------ real runs


def _workspace(tmp_path: Path) -> Path:
    """A temporary project: the workflow files of this checkout plus params/tiny.yaml."""
    return make_workspace(tmp_path, {"tiny": tiny_profile()})


@pytest.mark.slow
def test_snakemake_runs_teacher_and_pairs(tmp_path):
    work = _workspace(tmp_path)
    target = "results/tiny/pairs/manifest.json"
    log = _run([SNAKEMAKE, target, "--cores", "2", "--resources", "gpu=2", "--config", "profile=tiny"], cwd=work)
    assert "4 of 4 steps (100%) done" in log, log[-2000:]
    manifest = json.loads((work / target).read_text())
    assert manifest["spec"]["count"] == 64 and len(manifest["shards"]) == 2
    for k in range(2):
        assert (work / f"results/tiny/pairs/shard-{k}.images.npy").exists()
    again = _run([SNAKEMAKE, target, "--cores", "2", "--config", "profile=tiny"], cwd=work)
    assert "Nothing to be done" in again
    # A change to the pairs section re-runs the shards and the manifest, not the teacher.
    jobs = dry_run_jobs(target, "--rerun-triggers", "params", "--config", "profile=tiny", cwd=work, force=False)
    assert jobs == []
    profile = tiny_profile()
    profile["pairs"]["seed"] = 7
    (work / "params" / "tiny.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    rules = sorted(j["rule"] for j in dry_run_jobs(target, "--config", "profile=tiny", cwd=work, force=False))
    assert rules == ["pairs"] + ["pairs_shard"] * 2


GIT = ["git", "-c", "user.name=rfpp", "-c", "user.email=rfpp@localhost"]


def _dvc_workspace(tmp_path: Path, gitignore: str) -> Path:
    """A git + DVC repository holding the workflow, with dvc.yaml written for the tiny profile with two training
    seeds (each arm trains, samples and is scored once per seed) at NFE 1 (the real profiles' DAGs run NFE 2)."""
    profile = tiny_profile()
    profile["train"]["seeds"] = [0, 1]
    profile["sample"]["nfe"] = [1]
    work = make_workspace(tmp_path, {"tiny": profile})
    _run(["rfpp", "dvc", "--profile", "tiny"], cwd=work)
    (work / ".gitignore").write_text(gitignore)
    _run(["git", "init", "-q"], cwd=work)
    _run([DVC, "init", "-q"], cwd=work)
    return work


@pytest.mark.slow
def test_dvc_repro_metrics_plots_push_pull_and_an_experiment(tmp_path):
    """The tiny profile (two training seeds) through DVC in a git repository: `dvc repro` of every stage (a job per
    arm and seed), FID metrics, the report's table over the seeds (mean ± sd, the paired difference of the arms) and
    plots, `dvc metrics diff` against HEAD, `dvc push` of every output, `dvc pull` back from the remote alone, and
    `dvc exp run -S` of another pairs seed (shards and manifest redone, the teacher not)."""
    work = _dvc_workspace(tmp_path, "/results/\n/dvc_plots/\n")
    _run([DVC, "remote", "add", "-d", "store", str(tmp_path / "store")], cwd=work)
    stages = dvc_stages(work)
    assert {"teacher", "pairs", "pairs_shard@1", "train@rfpp-0", "train@rfpp-1", "sample@rfpp-1",
            "fid@baseline-0", "report"} <= set(stages)

    _run([DVC, "repro"], cwd=work, timeout=1200)
    report = (work / "results/tiny/report.md").read_text()
    assert re.search(r"^\| rfpp \| 1 \| [\d.]+ ± [\d.]+ \| [\d.]+, [\d.]+ \|", report, re.M), report
    assert re.search(r"^\| rfpp − baseline \| 1 \| -?[\d.]+ ± [\d.]+ \| 0: -?[\d.]+, 1: -?[\d.]+ \| (yes|no) \|",
                     report, re.M), report
    from rfpp.checkpoints import model_digest

    students = {model_digest(work / f"results/tiny/train/{a}/seed{k}/final.pt") for a in ("baseline", "rfpp")
                for k in (0, 1)}
    assert len(students) == 4  # each arm and seed its own weights
    assert json.loads((work / "results/tiny/pairs/manifest.json").read_text())["spec"]["count"] == 64
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages) and "pairs" in lock["pairs_shard@1"]["params"]["params/tiny.yaml"]
    metrics = json.loads(_run([DVC, "metrics", "show", "--json"], cwd=work))
    files = metrics[""]["data"]  # "" is the workspace
    assert sorted(files) == sorted(f"results/tiny/fid/{a}-seed{k}-nfe1.json" for a in ("baseline", "rfpp")
                                   for k in (0, 1))
    assert all(isinstance(f["data"]["value"], float) for f in files.values())
    _run([DVC, "plots", "show", "-o", "dvc_plots"], cwd=work)
    assert "fid_vs_nfe.png" in (work / "dvc_plots" / "index.html").read_text()
    _run([*GIT, "add", "-A"], cwd=work)
    _run([*GIT, "commit", "-qm", "tiny run"], cwd=work)
    assert "Data and pipelines are up to date" in _run([DVC, "status"], cwd=work)
    assert "Running stage" not in _run([DVC, "repro", "--dry"], cwd=work)
    diff = json.loads(_run([DVC, "metrics", "diff", "--all", "--json"], cwd=work))
    assert sorted(diff) == sorted(files)  # HEAD's metrics were found (in the DVC cache) and are unchanged
    for entry in diff.values():
        assert entry["value"]["old"] == entry["value"]["new"] is not None

    _run([DVC, "push"], cwd=work)
    md5s = {o["md5"] for stage in lock.values() for o in [*stage.get("outs", []), *stage.get("metrics", [])]}
    assert len(md5s) >= 1 + 2 * 2 + 1 + 4 + 4  # teacher, 2 x (record, images), manifest, students, FIDs, ...
    for md5 in md5s:  # every output is in the remote (a directory output by its .dir listing)
        assert (tmp_path / "store" / "files" / "md5" / md5[:2] / md5[2:]).is_file(), md5
    manifest = (work / "results/tiny/pairs/manifest.json").read_bytes()
    shutil.rmtree(work / "results")
    shutil.rmtree(work / ".dvc" / "cache")
    _run([DVC, "pull"], cwd=work)  # back from the remote alone
    assert (work / "results/tiny/pairs/manifest.json").read_bytes() == manifest
    assert "Data and pipelines are up to date" in _run([DVC, "status"], cwd=work)

    # An experiment with another pairs seed: shards and manifest are redone, the teacher is not.
    log = _run([DVC, "exp", "run", "-S", "params/tiny.yaml:pairs.seed=5", "pairs"], cwd=work)
    assert "Stage 'teacher' didn't change, skipping" in log
    assert "Running stage 'pairs_shard@0'" in log
    shown = json.dumps(json.loads(_run([DVC, "exp", "show", "--json"], cwd=work)))
    assert '"seed": 5' in shown
