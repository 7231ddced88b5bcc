# The profile and the pipeline's one description (rfpp.dag): each rule of workflow/rules/*.smk takes its input,
# output, log, command and GPU count from its stage there; `rfpp dvc` writes dvc.yaml from the same list.
import json
import os

from rfpp.config import ConfigError, load_config
from rfpp.dag import pipeline
from rfpp.lifeline import ENV_PARENT, anchor_value
from rfpp.paths import ProfilePaths
from rfpp.provenance import stage_settings

# Every job's `rfpp` watches this process and stops when it is gone (kill -9 included): no orphan trains on.
os.environ[ENV_PARENT] = anchor_value()

PARAMS_FILE = str(config.get("params", f"params/{config.get('profile', 'digits')}.yaml"))
try:
    CFG = load_config(PARAMS_FILE)  # the profile, validated, with rfpp's defaults filled in
except ConfigError as _err:
    from snakemake.exceptions import WorkflowError

    raise WorkflowError(f"{PARAMS_FILE}: {_err}") from None
# `--config resume=true`: training continues from an arm's checkpoints (after a crash or a time limit)
# instead of starting over; the settings must then be the ones the checkpoints were made with.
RESUME = str(config.get("resume", "false")).lower() in ("1", "true", "yes")
STAGES = {stage.name: stage for stage in pipeline(CFG, PARAMS_FILE, resume=RESUME)}
PATHS = ProfilePaths.of(CFG.profile)
TRAIN_GPUS = CFG.train.gpus


def section(rule):
    """The resolved profile sections a rule's stage depends on (rfpp.provenance.STAGE_SECTIONS, the ones its outputs'
    fingerprints hold and its DVC stage's `params:` lists), as one string: a change re-runs the rule (rerun trigger
    'params'), as DVC's `params:` does. A job of one training seed sees the configuration of that seed alone
    (Config.for_training_seed), as its outputs' fingerprints do: adding a seed to train.seeds adds jobs and re-runs
    none of the others."""
    stage = STAGES[rule]
    if "seed" in stage.over:
        return lambda w: json.dumps(stage_settings(CFG.for_training_seed(int(w.seed)), stage.sections), sort_keys=True)
    return json.dumps(stage_settings(CFG, stage.sections), sort_keys=True)


wildcard_constraints:
    arm="|".join(re.escape(arm) for arm in CFG.train.arms),
    seed=r"\d+",
    shard=r"\d+",


# ----------------------------------------------------------------------------------------------------- Slurm
# `--profile workflow/profiles/slurm` adds workflow/profiles/slurm/site.yaml, the cluster's settings, to the config
# as config["slurm"]. `stage_resources(stage, gpu)` is each rule's `resources:`: locally just the `gpu` count that
# `--resources gpu=N` caps; on Slurm the whole sbatch request (partition, account, QoS, GPUs, CPUs, memory, time),
# derived from the stage, the profile's sizes and the site's settings, within the site's limits.
SITE = config.get("slurm")
SITE_KEYS = {"partition", "account", "qos", "gpu_request", "gpu_model", "gres", "cpus_per_gpu", "mem_mb_per_gpu",
             "cpus", "max_gpus", "max_cpus", "max_mem_mb", "max_runtime", "runtime", "status_command",
             "status_interval", "status_timeout"}


def _site_error(message: str) -> Exception:
    from snakemake.exceptions import WorkflowError

    return WorkflowError(f"workflow/profiles/slurm/site.yaml: {message}")


if SITE is not None:
    if not isinstance(SITE, dict) or set(SITE) != SITE_KEYS:
        _known = set(SITE) if isinstance(SITE, dict) else set()
        raise _site_error(f"`slurm:` must have exactly the keys {sorted(SITE_KEYS)}; missing "
                          f"{sorted(SITE_KEYS - _known)}, unknown {sorted(_known - SITE_KEYS)}")
    if SITE["gpu_request"] not in ("gpus", "gres", "none") or SITE["status_command"] not in ("squeue", "sacct"):
        raise _site_error(f"gpu_request must be gpus, gres or none (got {SITE['gpu_request']!r}) and "
                          f"status_command squeue or sacct (got {SITE['status_command']!r})")
    # A GPU stage asks for GPUs when the site has them, unless the profile computes on CPUs: `device: cpu`, or
    # `device: auto` on the digits data (networks that two CPU cores train in minutes).
    ON_GPUS = SITE["gpu_request"] != "none" and (CFG.device.startswith("cuda") or
                                                 CFG.device == "auto" and CFG.data.dataset != "digits")
    if CFG.device.startswith("cuda") and SITE["gpu_request"] == "none":
        raise _site_error(f"gpu_request is none but {PARAMS_FILE} sets device: {CFG.device}; use a GPU site or "
                          f"device: auto")
    if ON_GPUS and TRAIN_GPUS > SITE["max_gpus"]:
        raise _site_error(f"{PARAMS_FILE} sets train.gpus: {TRAIN_GPUS}, more than max_gpus: {SITE['max_gpus']} "
                          f"of one node; lower train.gpus, or train across nodes by hand (docs/workflow.md, Slurm)")
    if not ON_GPUS:
        os.environ.update(CUDA_VISIBLE_DEVICES="")  # jobs that asked for no GPU use none, even on a GPU node


def _memory_mb(stage: str, gpus: int, light: bool) -> int:
    """One job's memory (MB): 2 GB for Python and torch, plus what the stage holds (a pair shard, the samples),
    plus, computing on CPUs, the activations of one batch (about 40 maps of the widest layer per image, x3 when
    training, for the backward pass); a GPU job gets at least gpus x mem_mb_per_gpu."""
    net, side = CFG.teacher.net, CFG.data.resolution
    image = net.get("in_channels", 3) * side * side * 4  # one float32 image (EDM snapshots: RGB)
    maps = net.get("model_channels", 128) * max(net.get("channel_mult", [2])) * side * side * 4 * 40
    held = {"pairs_shard": -(-CFG.pairs.count // CFG.pairs.num_shards),
            "sample": CFG.sample.num_samples, "fid": CFG.sample.num_samples + CFG.eval.num_samples}
    batch = {"teacher": CFG.teacher.batch, "pairs_shard": CFG.pairs.batch, "sample": CFG.sample.batch,
             "fid": CFG.eval.batch, "train": max([CFG.train.batch] + [a.batch or 0 for a in CFG.train.arms.values()])}
    training = stage == "train" or (stage == "teacher" and CFG.teacher.source == "train")
    total = 2048 * 2**20 + 2 * image * held.get(stage, 0)
    if gpus:
        return max(-(-total // 2**20), gpus * SITE["mem_mb_per_gpu"])
    if not light:
        total += batch[stage] * maps * (3 if training else 1)
    return -(-total // 2**20)


def stage_resources(stage: str, gpu: int | None = None) -> dict:
    """A rule's resources. `gpu`: the GPUs the stage computes on when the profile runs on GPUs; None (a stage
    that never computes: features, the manifest, the report) or 0 (not this time: a downloaded teacher) makes
    a light job, one CPU."""
    if SITE is None:
        return {} if gpu is None else {"gpu": gpu}
    gpus = gpu if gpu and ON_GPUS else 0
    procs = TRAIN_GPUS if stage == "train" else 1  # torchrun's processes, also on CPUs
    cpus = (gpus * SITE["cpus_per_gpu"] if gpus else procs * SITE["cpus"]) if gpu else 1
    runtime = SITE["runtime"].get(stage, SITE["runtime"]["default"])
    out = {"runtime": min(runtime, SITE["max_runtime"]), "cpus_per_task": min(cpus, SITE["max_cpus"]),
           "mem_mb": min(_memory_mb(stage, gpus, light=not gpu), SITE["max_mem_mb"]), "nodes": 1}
    for key, resource in (("partition", "slurm_partition"), ("account", "slurm_account"), ("qos", "qos")):
        if SITE[key] is not None:
            out[resource] = str(SITE[key])
    if gpus and SITE["gpu_request"] == "gres":
        out["gres"] = f"{SITE['gres']}:{gpus}"
    elif gpus:
        out["gpu"] = gpus
        if SITE["gpu_model"]:
            out["gpu_model"] = str(SITE["gpu_model"])
    return out


def _slurm(*args: str) -> str | None:
    """stdout of a Slurm client command, or None when it fails (no Slurm here, or no controller answers)."""
    import subprocess

    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def check_site_against_cluster() -> None:
    """Before anything is submitted: the partition exists, has GPUs when the run asks for them, and the status
    command can see finished jobs (sacct needs accounting; squeue needs MinJobAge). Skipped when `scontrol`
    cannot reach a controller (a dry run outside the cluster)."""
    text = _slurm("scontrol", "show", "config")
    if text is None:
        return
    facts = {k.strip(): v.strip() for k, sep, v in (line.partition("=") for line in text.splitlines()) if sep}
    accounting = facts.get("AccountingStorageType", "") != "accounting_storage/none"
    min_age = int(re.match(r"\d*", facts.get("MinJobAge", "")).group() or 0)
    if SITE["status_command"] == "sacct" and not accounting:
        raise _site_error("status_command is sacct, but this cluster keeps no accounting "
                          "(AccountingStorageType=accounting_storage/none); set status_command: squeue")
    need_age = 3 * SITE["status_interval"]  # the plugin's own rule (below it, it switches to sacct)
    if SITE["status_command"] == "squeue" and min_age < need_age:
        raise _site_error(f"status_command is squeue, but finished jobs leave squeue after MinJobAge={min_age} s; "
                          f"ask for MinJobAge>={need_age} in slurm.conf, or use sacct (with accounting)")
    if SITE["account"] is not None and not accounting:
        raise _site_error(f"account: {SITE['account']} needs accounting (slurmdbd), which this cluster lacks; "
                          f"set account: null")
    partitions = (_slurm("sinfo", "--noheader", "--format=%R") or "").split()
    if SITE["partition"] is not None and SITE["partition"] not in partitions:
        raise _site_error(f"partition {SITE['partition']!r} does not exist here (sinfo: {', '.join(partitions)}); "
                          f"set partition")
    if ON_GPUS:
        where = ["--partition", SITE["partition"]] if SITE["partition"] is not None else []
        gres = (_slurm("sinfo", "--noheader", "--format=%G", *where) or "").split()
        if not any("gpu" in g for g in gres):
            raise _site_error(f"this run asks for GPUs, but the partition's nodes have none (sinfo %G: "
                              f"{' '.join(gres)}); set gpu_request: none, or a GPU partition")


def watch_slurm_status(interval: int, timeout: int) -> None:
    """Wrap the status check of snakemake-executor-plugin-slurm 2.8.0, which drops a job whose status query fails
    (Snakemake then waits for it for ever) and waits for ever on a job missing from the answer (e.g. gone from
    squeue): such a job stays watched, and once its status has been unreadable for `timeout` seconds the run
    stops with a message naming it. Queries run every `interval` seconds (the plugin's own pace grows by 10 s per
    query that sees no job end, up to 180 s)."""
    import time

    import snakemake_executor_plugin_slurm as plugin

    if not (hasattr(plugin, "query_job_status") and hasattr(plugin.Executor, "check_active_jobs")):
        raise _site_error("the status guard needs snakemake-executor-plugin-slurm 2.8 (query_job_status, "
                          "Executor.check_active_jobs); install the version pyproject.toml pins")
    query, check = plugin.query_job_status, plugin.Executor.check_active_jobs
    last = {}

    async def recorded_query(command, logger):
        last["jobs"], seconds = await query(command, logger)  # jobs: {job id: state}, None when the query failed
        last["command"] = command
        return last["jobs"], seconds

    async def watched_check(self, active_jobs):
        last["jobs"] = None
        kept = [job async for job in check(self, active_jobs)]
        answer, now = last["jobs"], time.monotonic()
        read_at = self.__dict__.setdefault("_rfpp_status_read_at", {})  # Slurm job id -> when its status was read
        for job in active_jobs if answer is None else kept:  # after a failed query the plugin yields none of them
            jobid = job.external_jobid
            if answer is not None and (jobid in answer or jobid.split("_")[0] in answer):
                read_at[jobid] = now
            elif now - read_at.setdefault(jobid, now) > timeout:
                from snakemake.exceptions import WorkflowError

                why = "failed" if answer is None else "does not list it"
                raise WorkflowError(f"rfpp: the status of Slurm job {jobid} ({job.job}) could not be read for "
                                    f"{timeout} s (`{last.get('command')}` {why}); check the cluster (squeue, "
                                    f"sinfo), then run snakemake again: finished outputs are kept")
            yield job
        self.next_seconds_between_status_checks = interval

    plugin.query_job_status = recorded_query
    plugin.Executor.check_active_jobs = watched_check


if SITE is not None and "SLURM_JOB_ID" not in os.environ:  # the submitting Snakemake, not the one inside a job
    check_site_against_cluster()
    watch_slurm_status(SITE["status_interval"], SITE["status_timeout"])
