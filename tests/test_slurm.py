"""The cluster path: `snakemake --profile workflow/profiles/slurm`, with the site's settings in
workflow/profiles/slurm/site.yaml.

- Dry runs (no Slurm needed): each job's sbatch request, built by the executor plugin's own functions from the
  resources the rules derive from the profile and the site.
- A real single-node Slurm started by the tests (tests/slurm_cluster.py; module-scoped, stopped at the end even
  on failure, so that later modules see no cluster): the pipeline of a small digits profile through sbatch, its
  FIDs against a local run of the same profile; a site that does not fit the cluster stopping before anything
  is submitted; a controller outage stopping the run instead of hanging it; a run with accounting (slurmdbd,
  sacct). Skipped, with the packages to install, where Slurm is not installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from slurm_cluster import LocalSlurm, missing_programs
from test_workflow import tiny_profile
from workflow_helpers import ROOT, SNAKEMAKE, dry_run_jobs, env, make_workspace

# One pytest worker runs every test that starts or expects a Slurm cluster (Makefile: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")
PROFILE = ["--profile", "workflow/profiles/slurm"]
APT = "apt-get install slurmctld slurmd slurm-client munge (accounting: slurmdbd mariadb-server)"
needs_slurm = pytest.mark.skipif(bool(missing_programs()), reason=f"Slurm is not installed here (missing "
                                                                    f"{', '.join(missing_programs())}): {APT}")


def small_profile() -> dict:
    """tests/test_workflow.py's tiny profile cut to one job per rule: one pair shard, one arm (2-RF++, whose
    perceptual loss needs the `features` rule), one NFE."""
    profile = tiny_profile("tiny")
    profile["pairs"]["num_shards"] = 1
    profile["train"]["arms"] = {"rfpp": profile["train"]["arms"]["rfpp"]}
    profile["report"]["compare"] = []  # one arm: nothing to compare
    profile["sample"]["nfe"] = [1]
    return profile


def set_site(work: Path, **changes) -> None:
    """Edit the workspace's site.yaml, as a site admin would."""
    path = work / "workflow" / "profiles" / "slurm" / "site.yaml"
    site = yaml.safe_load(path.read_text())
    site["slurm"].update(changes)
    path.write_text(yaml.safe_dump(site, sort_keys=False))


def sbatch_args(resources: dict[str, str]) -> str:
    """The sbatch options snakemake-executor-plugin-slurm builds from a job's resources (its own functions)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    values = {k: int(v) if v.isdigit() else v for k, v in resources.items()}
    res = SimpleNamespace(**values, get=lambda key, default=None: values.get(key, default))
    job = SimpleNamespace(resources=res, threads=1)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "c", "account": "", "partition": "",
              "workdir": None}
    partition = f" -p {values['slurm_partition']}" if "slurm_partition" in values else ""
    return get_submit_command(job, params) + partition + set_gres_string(job)


def requests(work: Path, params: str) -> dict[str, str]:
    """rule -> sbatch options (and rule + ":shell" -> command) of a Slurm dry run."""
    jobs = dry_run_jobs(*PROFILE, "--config", f"params={params}", cwd=work)
    out = {j["rule"]: sbatch_args(j["resources"]) for j in jobs if j["rule"] != "all"}
    return out | {f"{j['rule']}:shell": j["shell"] for j in jobs if j["rule"] != "all"}


# --------------------------------------------------------------------------------------------------- dry runs


@pytest.fixture
def no_cluster(monkeypatch):
    """Outside any cluster (`scontrol` fails at once on an empty slurm.conf), where nothing is checked against
    one; even while this module's cluster runs."""
    monkeypatch.setenv("SLURM_CONF", "/dev/null")


@pytest.mark.usefixtures("no_cluster")
def test_requests_follow_the_profile_and_the_site(tmp_path):
    gpu_profile = yaml.safe_load((ROOT / "params" / "cifar10.yaml").read_text())
    cpu_profile = {**gpu_profile, "profile": "cifar10-cpu", "device": "cpu"}
    wide = {**gpu_profile, "profile": "cifar10-wide", "train": {**gpu_profile["train"], "gpus": 4}}
    work = make_workspace(tmp_path, {"cifar10": gpu_profile, "cifar10-cpu": cpu_profile, "cifar10-wide": wide,
                                     "tiny": small_profile()})

    shipped = requests(work, "params/cifar10.yaml")  # site.yaml as shipped: partition gpu, --gpus, 8 CPUs per GPU
    for rule in ("pairs_shard", "train", "sample", "fid"):
        assert " -p gpu" in shipped[rule] and shipped[rule].endswith(" --gpus=1"), shipped[rule]
        assert "--cpus-per-task=8" in shipped[rule] and "--mem 32000" in shipped[rule], shipped[rule]
    assert "-t 4320" in shipped["train"] and "-t 240" in shipped["pairs_shard"] and "-t 120" in shipped["sample"]
    for rule in ("teacher", "pairs", "report"):  # a downloaded teacher, the manifest and the report: one CPU
        assert "--gpus" not in shipped[rule] and "--cpus-per-task=1" in shipped[rule], shipped[rule]
    for params in ("params/cifar10-cpu.yaml", "params/tiny.yaml"):  # device: cpu, and digits: no GPU anywhere
        on_cpus = requests(work, params)
        assert not any("--gpus" in args or "--gres" in args for args in on_cpus.values()), on_cpus
        assert "--cpus-per-task=4" in on_cpus["train"], on_cpus["train"]

    set_site(work, partition="a100", account="proj", qos="long", gpu_request="gres", gres="gpu:a100",
             max_cpus=16, max_mem_mb=100000, max_runtime=1440)
    site = requests(work, "params/cifar10-wide.yaml")
    train = site["train"]  # 4 GPUs x 8 CPUs, 4 x 32 GB, capped at the site's limits
    assert train.endswith(" -p a100 --gres=gpu:a100:4"), train
    assert "--cpus-per-task=16" in train and "--mem 100000" in train and "-t 1440" in train, train
    assert "--qos=long" in train and "--nodes=1" in train, train
    assert site["sample"].endswith(" --gres=gpu:a100:1"), site["sample"]
    torchrun = "python -m rfpp.devices --gpus 4 -- torchrun --standalone --nproc_per_node 4 "  # on Slurm's 4 GPUs
    assert site["train:shell"].startswith(torchrun), site["train:shell"]


@pytest.mark.usefixtures("no_cluster")
def test_a_site_error_names_the_setting(tmp_path):
    wide = tiny_profile("wide")
    wide.update(device="cuda")
    wide["train"]["gpus"] = 16
    work = make_workspace(tmp_path, {"wide": wide})
    args = [SNAKEMAKE, "-n", *PROFILE, "--config", "profile=wide"]
    proc = subprocess.run(args, cwd=work, env=env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "train.gpus: 16, more than max_gpus: 8" in proc.stdout

    set_site(work, gpu_request="none")
    proc = subprocess.run(args, cwd=work, env=env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "gpu_request is none but params/wide.yaml sets device: cuda" in proc.stdout


# -------------------------------------------------------------------------------------------- a real Slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm without accounting, for this module; every daemon stops at the end, also on failure."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start(accounting=False)
        yield cluster
    finally:
        cluster.stop()


def site_for(cluster: LocalSlurm, work: Path, **changes) -> None:
    """What this cluster's admin writes into site.yaml: partition `debug`, no GPUs, the node's two CPUs, a status
    query every second (the default 40 s would dominate seconds-long jobs)."""
    set_site(work, **{"partition": "debug", "gpu_request": "none", "cpus": 1, "max_cpus": 2, "max_mem_mb": 8000,
                      "status_interval": 1, **changes})


def fids(work: Path) -> dict[str, float]:
    return {p.name: json.loads(p.read_text())["value"] for p in (work / "results/tiny/fid").glob("*-nfe*.json")}


def run_env(work: Path, cluster: LocalSlurm | None = None) -> dict[str, str]:
    """One thread per process (four share the two cores), rfpp's cache beside the workspace, the cluster's conf."""
    extra = {"SLURM_CONF": str(cluster.conf)} if cluster else {}
    return env(OMP_NUM_THREADS="1", RFPP_CACHE_DIR=str(work.parent / "cache"), **extra)


def snakemake(cluster: LocalSlurm, work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *PROFILE, "--config", "profile=tiny", *args], cwd=work, timeout=600,
                          env=run_env(work, cluster), capture_output=True, text=True)


@pytest.fixture(scope="module")
def pipeline(slurm, tmp_path_factory) -> SimpleNamespace:
    """The small profile's whole pipeline through the Slurm profile and, at the same time, locally."""
    base = tmp_path_factory.mktemp("pipeline")
    work = make_workspace(base, {"tiny": small_profile()})
    local = make_workspace(base / "local", {"tiny": small_profile()})
    site_for(slurm, work)
    started = time.monotonic()
    reference = subprocess.Popen([SNAKEMAKE, "--cores", "2", "--config", "profile=tiny"], cwd=local,
                                 env=run_env(local), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc = snakemake(slurm, work)
    finally:
        local_log = reference.communicate(timeout=600)[0]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert reference.returncode == 0, local_log[-5000:]
    print(f"pipeline through Slurm and locally: {time.monotonic() - started:.0f} s")
    return SimpleNamespace(work=work, local=local, log=log)


@needs_slurm
@pytest.mark.slow
def test_the_pipeline_runs_through_sbatch_and_matches_a_local_run(slurm, pipeline):
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/rule_(\w+)/", pipeline.log))
    assert sorted(submitted.values()) == sorted(["teacher", "features", "pairs_shard", "pairs", "train", "sample",
                                                 "fid", "report"]), pipeline.log[-3000:]  # every rule, via sbatch
    states = dict(line.split("|") for line in slurm.client("squeue", "--noheader", "--states=all",
                                                           "--format=%i|%T").split())
    assert all(states.get(jobid) == "COMPLETED" for jobid in submitted), states
    assert fids(pipeline.work) == fids(pipeline.local) and len(fids(pipeline.work)) == 1
    assert (pipeline.work / "results/tiny/report.md").exists()


@needs_slurm
@pytest.mark.slow
def test_a_site_that_does_not_fit_the_cluster_stops_before_submitting(slurm, tmp_path):
    work = make_workspace(tmp_path, {"tiny": small_profile()})
    site_for(slurm, work, status_command="sacct")  # this cluster has no accounting
    proc = snakemake(slurm, work, "-n")
    assert proc.returncode != 0 and "status_command is sacct, but this cluster keeps no accounting" in proc.stdout
    site_for(slurm, work, status_command="squeue", partition="gpu")
    proc = snakemake(slurm, work, "-n")
    assert proc.returncode != 0 and "partition 'gpu' does not exist here (sinfo: debug)" in proc.stdout


@needs_slurm
@pytest.mark.slow
def test_a_job_whose_status_cannot_be_read_stops_the_run(slurm, pipeline):
    """The controller goes away while a job runs: squeue fails; the run stops after status_timeout, naming the
    job (the plugin alone would drop the job and Snakemake would wait for ever)."""
    site_for(slurm, pipeline.work, status_timeout=4)
    args = [SNAKEMAKE, *PROFILE, "--config", "profile=tiny", "--forcerun", "report"]
    proc = subprocess.Popen(args, cwd=pipeline.work, env=run_env(pipeline.work, slurm), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    jobid, log = None, ""
    try:
        for line in proc.stdout:
            log += line
            if "has been submitted with SLURM jobid" in line:
                jobid = line.split("SLURM jobid ")[1].split()[0]
                break
        slurm.stop_controller()
        log += proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
        slurm.restart(accounting=False)
        slurm.wait_until_no_jobs()
    assert jobid is not None and proc.returncode != 0, log[-3000:]
    assert f"rfpp: the status of Slurm job {jobid} (report) could not be read for 4 s" in log, log[-3000:]


@needs_slurm
@pytest.mark.skipif(bool(missing_programs(accounting=True)), reason=f"Slurm accounting is not installed here "
                    f"(missing {', '.join(missing_programs(accounting=True))}): {APT}")
@pytest.mark.slow
def test_with_accounting_sacct_reads_the_status(slurm, pipeline):
    slurm.restart(accounting=True)
    site_for(slurm, pipeline.work, status_command="sacct", account="rfpp", qos="normal")
    proc = snakemake(slurm, pipeline.work, "--forcerun", "report")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    run_id = log.split("SLURM run ID: ")[1].split()[0]  # every job of the run is named after it
    rows = slurm.client("sacct", "--noheader", "--parsable2", "--allocations", "--starttime=now-1days",
                        f"--name={run_id}", "--format=JobName,State,Account").split()
    assert rows == [f"{run_id}|COMPLETED|rfpp"], rows  # the report's job, with the site's account
    assert (pipeline.work / "results/tiny/report.md").exists()


@needs_slurm
@pytest.mark.slow
def test_a_new_training_seed_re_runs_no_other_job(pipeline):
    """On the finished local run (the `pipeline` fixture's): a training job's params (Snakemake's rerun trigger) are
    its seed's configuration alone (Config.for_training_seed), as its outputs' fingerprints are, so adding a seed to
    train.seeds adds that seed's jobs and re-runs none of the others'; a training setting re-runs them all. (DVC's
    params name whole sections: there a new seed re-runs every training.)"""
    params = pipeline.local / "params" / "tiny.yaml"
    original = params.read_text()
    profile = yaml.safe_load(original)
    try:
        profile["train"]["seeds"] = [0, 5]
        params.write_text(yaml.safe_dump(profile, sort_keys=False))
        jobs = dry_run_jobs("--config", "profile=tiny", cwd=pipeline.local, force=False)
        assert [j["output"] for j in jobs if j["rule"] == "train"] == [["results/tiny/train/rfpp/seed5/final.pt"]]
        profile["train"]["lr"] = 1e-3
        params.write_text(yaml.safe_dump(profile, sort_keys=False))
        jobs = dry_run_jobs("--config", "profile=tiny", cwd=pipeline.local, force=False)
        assert sorted(o for j in jobs if j["rule"] == "train" for o in j["output"]) == \
            [f"results/tiny/train/rfpp/seed{k}/final.pt" for k in (0, 5)]
    finally:
        params.write_text(original)

