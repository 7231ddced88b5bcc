"""One round of Reflow for one arm: the training loop.

Conventions (docs/conventions.md): a pair is (z, x) = (noise, the teacher's image); t ~ the arm's distribution;
x_t = (1 − t)·x + t·z; the target velocity is v = z − x; the student predicts v̂ = student(x_t, t, labels);
the arm's ReflowLoss compares them (the perceptual term on x̂ = x_t − t·v̂). One step = one Adam update on the
global batch `train.batch`, split over W processes and, within a process, into micro-batches of
`train.micro_batch` whose gradients are accumulated (DDP all-reduces once per step).

Outputs under results/<profile>/train/<arm>/seed<k>/ (k: the run's training seed, one of train.seeds; the run's
config is `Config.for_training_seed(k)`: seed k, train.seeds [k]): config.yaml (the resolved config),
checkpoints/step-*.pt (rfpp.train.checkpoint), samples/ (grids, timestep histogram) and, at the end, final.pt:
the EMA weights as an rfpp model file (rfpp.checkpoints.save_model). Rank 0 alone writes and logs.

Provenance (rfpp.provenance): the run's *inputs* are {"pairs": the pair manifest's fingerprint id (its file's
sha256 when it has none), "teacher": the teacher file's verified tensors_sha256, and, when the arm's loss uses
train.perceptual=digits-classifier, "perceptual": the classifier file's sha256}. Every checkpoint stores them and
a resume from one made from other inputs is refused (ResumeError naming the input); final.pt's meta holds
`fingerprint("train", "rfpp.model/1", stage_settings(config, "train", arm), inputs)`.
Rank 0 holds train/<arm>/seed<k>/.lock (output_lock) for the whole run: a second run of the arm fails at once naming
the holder's pid. Before anything is moved or deleted the run checks its config and inputs (the teacher exists
and verifies, the pairs verify, the perceptual network builds); --restart then moves the old checkpoints to
checkpoints.previous/, deleted once the new run has written its first checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from rfpp import checkpoints as model_files
from rfpp.atomic import write_text
from rfpp.checkpoints import CheckpointError, file_sha256, model_digest, save_model
from rfpp.config import Config, ConfigError
from rfpp.losses import PERCEPTUAL_KINDS, ReflowLoss
from rfpp.pairs import PairDataset
from rfpp.pairs.manifest import versions
from rfpp.paths import ProfilePaths
from rfpp.provenance import difference, fingerprint, output_lock, stage_settings
from rfpp.timesteps import sample_timesteps
from rfpp.tracking import stage_run
from rfpp.train import dist as rdist
from rfpp.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint, state_checksum
from rfpp.train.data import make_loader
from rfpp.train.monitor import HIST_BINS, eval_batch, evaluate, timestep_histogram_png
from rfpp.train.setup import EMA, build_loss, build_optimizer, build_student, lr_at, student_spec

# Settings that may change when a run is resumed; every other seed/pairs/train setting must match the checkpoint.
RESUME_MAY_CHANGE = ("train.steps", "train.ckpt_every", "train.keep_last", "train.keep_every", "train.log_every",
                     "train.eval_every", "train.eval_batch", "train.straightness_nfe", "train.num_workers",
                     "train.compile", "train.arms.")
STUDENT_FORMAT = f"{model_files.FORMAT}/{model_files.VERSION}"  # the `format` of final.pt's fingerprint
PREVIOUS = "checkpoints.previous"  # where --restart moves the old checkpoints until the new run's first one


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (train.nonfinite = "stop"); the message names the step."""


class ResumeError(RuntimeError):
    """Checkpoints exist but --resume was not given, or the checkpoint does not fit the configuration."""


@dataclass
class TrainResult:
    """What a call of `train_arm` did."""

    arm: str
    step: int
    finished: bool
    student: Path | None = None
    checkpoint: Path | None = None
    resumed_from: int | None = None
    skipped: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StepRunner:
    """One optimisation step: forward/backward of every micro-batch, all-reduced losses, the update, the EMA.

    `model` is what is called (the student, maybe wrapped in DDP and/or compiled); `student` the bare module
    whose parameters the optimizer and the EMA see.
    """

    model: nn.Module
    student: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA
    config: Config
    arm_name: str
    env: rdist.DistEnv
    accum: int
    precision: str = "fp32"
    channels_last: bool = False
    hist: torch.Tensor | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        self.train = self.config.train
        self.arm = self.train.arms[self.arm_name]
        self.gen = torch.Generator(self.env.device)
        if self.hist is None:
            self.hist = torch.zeros(HIST_BINS, dtype=torch.float64, device=self.env.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.env.device.type, dtype=dtype)

    def micro_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], step: int, micro: int,
                   sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch → detached [loss sum, term sums …] over its samples."""
        device = self.env.device
        chunk = self.env.rank * self.accum + micro  # index of this micro-batch within the global batch
        torch.manual_seed(rdist.step_seed(self.config.seed, step, chunk, rdist.STREAM_DROPOUT))
        self.gen.manual_seed(rdist.step_seed(self.config.seed, step, chunk, rdist.STREAM_TIMESTEPS))
        noise, x0, labels = (b.to(device, non_blocking=True) for b in batch)
        labels = None if bool((labels < 0).all()) else labels
        if self.channels_last:
            noise, x0 = noise.contiguous(memory_format=torch.channels_last), x0.contiguous(
                memory_format=torch.channels_last)
        t = sample_timesteps(x0.shape[0], self.arm.timesteps, self.arm.a, generator=self.gen, device=device)
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * noise
        v = noise - x0
        no_sync = getattr(self.model, "no_sync", None) if not sync else None
        with no_sync() if no_sync is not None else contextlib.nullcontext():
            with self.autocast():
                v_pred = self.model(x_t, t, labels)
                loss, terms = self.loss_fn(v_pred, v, x_t, x0, t)
            self.scaler.scale(loss.mean() / self.accum).backward()
        assert self.hist is not None
        self.hist += torch.histc(t.double(), bins=HIST_BINS, min=0, max=1)
        return torch.stack([loss.detach().float().sum(), *(terms[k].float().sum() for k in sorted(terms))])

    def __call__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], step: int,
                 term_names: list[str] | None = None) -> dict[str, float]:
        """Run step `step` (0-based: it completes step + 1) on `accum` micro-batches → the global mean metrics."""
        lr = lr_at(step, self.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: torch.Tensor | None = None
        n_local = 0
        for micro in range(self.accum):
            batch = next(batches)
            n_local += batch[0].shape[0]
            part = self.micro_step(batch, step, micro, sync=micro == self.accum - 1)
            sums = part if sums is None else sums + part
        assert sums is not None
        sums = torch.cat([sums, torch.tensor([float(n_local)], device=sums.device)])
        if self.env.distributed:
            torch.distributed.all_reduce(sums)
        values = (sums[:-1] / sums[-1]).tolist()  # one host sync per step: the loss decides what happens next
        metrics = {"loss": values[0], "lr": lr}
        names = term_names if term_names is not None else getattr(self, "_term_names", [])
        metrics.update(zip(names, values[1:], strict=False))
        if not math.isfinite(values[0]):
            self.optimizer.zero_grad(set_to_none=True)
            if self.train.nonfinite == "stop":
                raise NonFiniteLossError(f"step {step + 1}")
            self.skipped += 1
            metrics["skipped"] = float(self.skipped)
            return metrics
        if self.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.train.grad_clip)
            metrics["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.student, step + 1)
        return metrics


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def check_resume_config(saved: dict[str, Any], config: Config, arm: str) -> None:
    """Refuse a checkpoint made with other settings (seed, pairs, this arm, optimisation)."""
    ours, theirs = _flat(config.to_dict()), _flat(saved)
    keys = [k for k in ours if k == "seed" or k.startswith(("pairs.", "train."))]
    keys = [k for k in keys if not k.startswith(RESUME_MAY_CHANGE) or k.startswith(f"train.arms.{arm}.")]
    for key in keys:
        if theirs.get(key) != ours[key]:
            raise ResumeError(f"the checkpoint was made with {key}={theirs.get(key)!r}, this run has {ours[key]!r}; "
                              f"resume with the checkpoint's setting (or start over with --restart)")


def check_resume_inputs(ckpt: dict[str, Any], inputs: dict[str, str]) -> None:
    """Refuse a checkpoint made from other inputs (the pairs remade, another teacher or perceptual network)."""
    why = difference(fingerprint("train", "inputs", {}, ckpt.get("inputs") or {}),
                     fingerprint("train", "inputs", {}, inputs))
    if why is not None:
        raise ResumeError(f"the checkpoint {ckpt['path']} was made from other inputs: {why}; restore them, or start "
                          "over with --restart")


def weights_checksum(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (CPU bytes, state-dict order): equal on ranks that are in sync."""
    return state_checksum(module.state_dict())


def check_teacher_exists(paths: ProfilePaths) -> None:
    if not paths.teacher.exists():
        raise CheckpointError(f"the teacher {paths.teacher} does not exist; run `rfpp teacher` first")


def run_inputs(config: Config, arm: str, paths: ProfilePaths, dataset: PairDataset,
               teacher_digest: str | None = None) -> dict[str, str]:
    """The inputs of a run (see the module docstring), each verified: CheckpointError when the teacher is missing
    or corrupted. `dataset` is the run's (verified) pair set; `teacher_digest` the verified digest of the teacher
    file when the caller has already loaded it (else it is read here)."""
    check_teacher_exists(paths)
    pairs = (dataset.manifest.get("fingerprint") or {}).get("id") or \
        file_sha256(paths.pair_set_manifest(config.pairs.source))
    inputs = {"pairs": str(pairs), "teacher": teacher_digest or model_digest(paths.teacher)}
    if config.train.arms[arm].loss in PERCEPTUAL_KINDS and config.train.perceptual == "digits-classifier":
        inputs["perceptual"] = file_sha256(paths.features)
    return inputs


def freeze_unused(student: nn.Module, shape: tuple[int, ...], label_dim: int, device: torch.device) -> list[str]:
    """Freeze parameters that get no gradient (e.g. EDM's augmentation mapping, never fed): DDP needs every trained
    parameter to be used. A probe forward/backward on one image finds them; returns their names."""
    x = torch.zeros(1, *shape, device=device)
    labels = torch.zeros(1, dtype=torch.int64, device=device) if label_dim else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        student(x + 0.1, torch.full((1,), 0.5, device=device), labels).square().mean().backward()
    unused = [name for name, p in student.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in student.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    return unused


def train_arm(config: Config, arm: str, paths: ProfilePaths | None = None, resume: bool = False,
              restart: bool = False, until: int | None = None, progress: bool = True,
              env: rdist.DistEnv | None = None, seed: int | None = None) -> TrainResult:
    """Train one arm of `config` with training seed `seed` (one of train.seeds; None: the only one) into
    train/<arm>/seed<seed>/ (see the module docstring); returns what was done.

    resume: continue from the newest checkpoint of the arm that verifies (a run with none starts from the arm's
    init); without it, existing checkpoints make this raise ResumeError. restart: start over, the old checkpoints
    moved aside once the config and the inputs are checked (deleted at the new run's first checkpoint).
    until: stop after that step (writing a checkpoint, no final model), e.g. for time-limited jobs.
    Under torchrun call `rfpp.train.dist.setup()` first (or pass `env`). LockedError at once when another
    process is training this arm.
    """
    if arm not in config.train.arms:
        raise ConfigError(f"unknown arm {arm!r}; this profile's arms: {', '.join(config.train.arms)}")
    if resume and restart:
        raise ConfigError("--resume and --restart exclude each other")
    if until is not None and until < 1:
        raise ConfigError(f"--until {until} is not a step (give 1 or more)")
    if seed is None:
        if len(config.train.seeds) > 1:
            raise ConfigError(f"the profile trains seeds {config.train.seeds}: name one (--train-seed)")
        seed = config.train.seeds[0]
    config = config.for_training_seed(seed)  # what this run records: seed and train.seeds = [seed]
    paths = paths or ProfilePaths.of(config.profile)
    env = env or rdist.setup(config.device)
    out_dir = paths.train_dir(arm, seed)
    lock = (output_lock(out_dir / ".lock", f"the training of arm {arm!r}, seed {seed} ({out_dir})") if env.is_main
            else contextlib.nullcontext())
    with lock:
        return _train_arm(config, arm, paths, env, resume, restart, until, progress)


def _train_arm(config: Config, arm: str, paths: ProfilePaths, env: rdist.DistEnv, resume: bool, restart: bool,
               until: int | None, progress: bool) -> TrainResult:
    """train_arm's work, under the run's lock; `config` is the run's (Config.for_training_seed)."""
    arm_cfg = config.train.arms[arm]
    train = dataclasses.replace(config.train, batch=arm_cfg.batch or config.train.batch)
    out_dir = paths.train_dir(arm, config.seed)
    ckpt_dir, sample_dir = out_dir / "checkpoints", out_dir / "samples"
    name = f"{arm} seed {config.seed}"
    say = (lambda msg: tqdm.write(f"[train {name}] {msg}", file=sys.stderr)) if env.is_main else (lambda msg: None)

    # ---- batch split ----------------------------------------------------------------------------------
    if train.batch % env.world:
        raise ConfigError(f"train.batch={train.batch} does not split over {env.world} processes")
    per_rank = train.batch // env.world
    micro = train.micro_batch or per_rank
    if per_rank % micro:
        raise ConfigError(f"train.micro_batch={micro} does not divide the per-process batch {per_rank} "
                          f"(train.batch={train.batch} over {env.world} processes)")
    accum = per_rank // micro

    # ---- check the inputs before anything is moved or deleted --------------------------------------------
    dataset = PairDataset(paths.pair_set_manifest(config.pairs.source), verify=env.local_rank == 0)
    loss_fn: nn.Module = build_loss(arm_cfg, config, paths)
    teacher = None  # a run that starts from the arm's init reads the teacher once: its weights and its digest
    if not (resume and list_checkpoints(ckpt_dir)):
        check_teacher_exists(paths)
        teacher = student_spec(paths.teacher, train.dropout)
    inputs = run_inputs(config, arm, paths, dataset, teacher[3]["tensors_sha256"] if teacher else None)
    provenance = fingerprint("train", STUDENT_FORMAT, stage_settings(config, "train", arm), inputs)

    # ---- resume or start ------------------------------------------------------------------------------
    previous = out_dir / PREVIOUS
    student_file = paths.student(arm, config.seed)
    if restart and env.is_main and (list_checkpoints(ckpt_dir) or student_file.exists()):
        shutil.rmtree(previous, ignore_errors=True)
        if ckpt_dir.exists():
            ckpt_dir.rename(previous)
        previous.mkdir(parents=True, exist_ok=True)
        if student_file.exists():  # the old run's student must not pass for this run's (say after --until)
            student_file.rename(previous / student_file.name)
        say(f"--restart: moved the old checkpoints and student to {previous} (deleted once this run writes its "
            "first checkpoint)")
    rdist.barrier(env)
    ckpt = None
    if list_checkpoints(ckpt_dir):
        if not resume:
            last = list_checkpoints(ckpt_dir)[-1][0]
            raise ResumeError(f"{ckpt_dir} holds checkpoints up to step {last}: pass --resume to continue from it, "
                              "or --restart to start over")
        ckpt = latest_checkpoint(ckpt_dir, say)
    if ckpt is not None:
        # A resumed run takes the network and its weights from the checkpoint alone; the teacher's are not loaded.
        check_resume_config(ckpt["config"], config, arm)
        if ckpt["arm"] != arm:
            raise ResumeError(f"{ckpt['path']} belongs to arm {ckpt['arm']!r}, not {arm!r}")
        check_resume_inputs(ckpt, inputs)
        arch, kwargs, sigma_data = ckpt["arch"], dict(ckpt["net_kwargs"]), float(ckpt["sigma_data"])
        student = build_student(arch, kwargs, sigma_data, state=None, seed=config.seed)
        student.load_state_dict(ckpt["model"], strict=True)
        start = int(ckpt["step"])
        say(f"resuming from {ckpt['path']} (step {start}); the teacher's weights are not used")
    else:
        arch, kwargs, teacher_state, teacher_info = teacher or student_spec(paths.teacher, train.dropout)
        teacher = None
        if teacher_info["tensors_sha256"] != inputs["teacher"]:
            raise CheckpointError(f"the teacher {paths.teacher} was replaced while this run started; run again")
        sigma_data = float(teacher_info.get("sigma_data", 0.5))
        init_state = teacher_state if arm_cfg.init == "teacher" else None
        student = build_student(arch, kwargs, sigma_data, state=init_state, seed=config.seed, source=str(paths.teacher))
        start = 0
        say(f"starting from {'the teacher ' + str(paths.teacher) if init_state is not None else 'scratch'}")
    if until is not None and until <= start:
        raise ConfigError(f"--until {until} is not after the checkpoint's step {start}")
    end = min(train.steps, until) if until is not None else train.steps

    device = env.device
    student.to(device)
    if train.channels_last:
        student.to(memory_format=torch.channels_last)
    shape, label_dim = tuple(dataset.spec.shape), student.label_dim
    if tuple(shape) != (student.img_channels, student.img_resolution, student.img_resolution):
        raise ConfigError(f"the pairs are {shape} images, the student makes "
                          f"{(student.img_channels, student.img_resolution, student.img_resolution)}")
    frozen = freeze_unused(student, shape, label_dim, device)
    ema = EMA(student, train.ema, train.ema_start)
    optimizer = build_optimizer([p for p in student.parameters() if p.requires_grad], train, device)
    scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
    loss_fn = loss_fn.to(device)
    hist = torch.zeros(HIST_BINS, dtype=torch.float64, device=device)
    skipped = 0
    if ckpt is not None:
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        hist = ckpt["t_hist"].to(device=device, dtype=torch.float64)
        skipped = int(ckpt.get("skipped", 0))
        if len(ckpt["rng"]) == env.world:
            rdist.set_rng_state(ckpt["rng"][env.rank], device)
    ema.module.to(device)

    model: nn.Module = student
    if env.distributed:
        model = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
    if train.compile:  # inductor draws its own dropout masks: compiled runs match eager ones only without dropout
        model = torch.compile(model)
        loss_fn = torch.compile(loss_fn)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    runner = StepRunner(model, student, loss_fn, optimizer, scaler, ema, config, arm, env, accum,
                        precision=train.precision, channels_last=train.channels_last, hist=hist, skipped=skipped)
    loader = make_loader(dataset, train.batch, micro, env.rank, env.world, config.seed, start, train.num_workers,
                         pin_memory=device.type == "cuda")
    batches = iter(loader)
    vis_noise, vis_labels = eval_batch(dataset, train.eval_batch)
    vis_noise = vis_noise.to(device)
    vis_labels = vis_labels.to(device) if vis_labels is not None else None
    scale = max(1, 64 // shape[-1])
    term_names = _term_names(loss_fn)

    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.yaml", config.to_yaml())
    result = TrainResult(arm=arm, step=start, finished=False, resumed_from=ckpt["step"] if ckpt else None)
    last_ckpt: Path | None = Path(ckpt["path"]) if ckpt else None
    tracker = stage_run(config, "train", arm=arm, enabled=env.is_main, seed=config.seed)  # rank 0 alone logs

    def checkpoint(step: int, metrics: dict[str, float]) -> Path | None:
        states = rdist.gather_objects(env, {"rng": rdist.rng_state(device), "sum": weights_checksum(student)})
        if not env.is_main:
            return None
        sums = [s["sum"] for s in states]  # type: ignore[index]
        if len(set(sums)) != 1:
            raise RuntimeError(f"the processes' weights differ at step {step}: {sums}")
        payload = {"arm": arm, "step": step, "arch": arch, "net_kwargs": kwargs, "sigma_data": sigma_data,
                   "model": student.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                   "rng": [s["rng"] for s in states],  # type: ignore[index]
                   "data": {"position": step * train.batch, "batch": train.batch, "seed": config.seed,
                            "world": env.world, "micro_batch": micro},
                   "skipped": runner.skipped, "t_hist": runner.hist.cpu(), "rank_checksums": sums,
                   "frozen": frozen, "config": config.to_dict(), "inputs": inputs, "metrics": dict(metrics),
                   "versions": {k: str(v) for k, v in versions().items()}}
        path = save_checkpoint(ckpt_dir, payload, train.keep_last, train.keep_every)
        if previous.exists():
            shutil.rmtree(previous)
            say(f"deleted the checkpoints of the previous run ({previous})")
        return path

    def show(run: Any, step: int) -> None:
        metrics, pngs = evaluate(ema.module, vis_noise, vis_labels, sample_dir, step, config.sample.solver,
                                 config.sample.update, train.straightness_nfe, scale=scale,
                                 t_start=config.sample.t_start)
        run.log_metrics(metrics, step=step)
        for png in pngs:
            run.log_image_file(png, artifact_path="samples")
        assert runner.hist is not None
        hist_png = timestep_histogram_png(runner.hist, sample_dir / "timesteps.png",
                                          f"{arm}: t ~ {arm_cfg.timesteps} (a={arm_cfg.a}), {step} steps")
        run.log_image_file(hist_png, artifact_path="timesteps")

    with tracker as run:
        if env.is_main:
            run.set_tags({"rfpp.loss": _describe(loss_fn), "rfpp.resumed_from": result.resumed_from,
                          "rfpp.world_size": env.world, "rfpp.accumulation": accum})
        bar = tqdm(total=end, initial=start, desc=f"train {name}", unit="step", disable=not (progress and env.is_main),
                   dynamic_ncols=True)
        metrics: dict[str, float] = {}
        window_t, window_steps = time.perf_counter(), 0
        step = start
        try:
            while step < end:
                try:
                    metrics = runner(batches, step, term_names)
                except NonFiniteLossError as err:
                    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise NonFiniteLossError(
                        f"non-finite loss at {err} of arm {arm!r} ({metrics.get('loss', 'n/a')} before); stopped, "
                        f"{where}. Lower train.lr, set train.grad_clip, or set train.nonfinite=skip") from None
                step += 1
                window_steps += 1
                if step % train.log_every == 0 or step == end:
                    elapsed = time.perf_counter() - window_t
                    metrics["images_per_s"] = window_steps * train.batch / max(elapsed, 1e-9)
                    window_t, window_steps = time.perf_counter(), 0
                    if env.is_main:
                        run.log_metrics(metrics, step=step)
                        bar.set_postfix(loss=f"{metrics['loss']:.4g}", img_s=f"{metrics['images_per_s']:.0f}")
                bar.update(1)
                if step % train.ckpt_every == 0 or step == end:
                    saved = checkpoint(step, metrics)
                    last_ckpt = saved or last_ckpt
                if env.is_main and train.eval_every and step % train.eval_every == 0 and step != end:
                    show(run, step)
        finally:
            bar.close()
            del batches
        result.step, result.skipped, result.metrics = step, runner.skipped, dict(metrics)
        result.checkpoint = last_ckpt
        if step >= train.steps:
            result.finished = True
            if env.is_main:
                show(run, step)
                meta = {"stage": "train", "arm": arm, "seed": config.seed, "steps": step, "weights": "ema",
                        "ema": train.ema, "loss": arm_cfg.loss, "timesteps": arm_cfg.timesteps, "a": arm_cfg.a,
                        "init": arm_cfg.init,
                        "perceptual": _describe(loss_fn), "checkpoint": str(last_ckpt),
                        "skipped_steps": runner.skipped, "config": config.to_dict(), "fingerprint": provenance}
                result.student = save_model(paths.student(arm, config.seed), ema.module.net, sigma_data, meta)
                run.log_artifact(out_dir / "config.yaml")
                run.log_summary({"train_images_per_s": metrics.get("images_per_s", float("nan")),
                                 **{f"final_{k}": v for k, v in metrics.items() if k.startswith("loss")}})
                run.set_tags({"rfpp.final_model": str(result.student.resolve()),
                              "rfpp.final_checkpoint": str(last_ckpt.resolve()) if last_ckpt else "",
                              "rfpp.skipped_steps": runner.skipped})
                say(f"done: {step} steps; EMA student {result.student}")
        elif env.is_main:
            say(f"stopped after step {step} (--until); continue with --resume")
    rdist.barrier(env)
    return result


def _describe(loss_fn: nn.Module) -> str:
    inner = getattr(loss_fn, "_orig_mod", loss_fn)
    return inner.describe() if isinstance(inner, ReflowLoss) else type(inner).__name__


def _term_names(loss_fn: nn.Module) -> list[str]:
    """The names of the loss terms, in the order `micro_step` sums them (sorted keys of ReflowLoss's dict)."""
    kind = getattr(getattr(loss_fn, "_orig_mod", loss_fn), "kind", "")
    names = {"l2": ["l2"], "l2-squared": ["l2_squared"], "pseudo-huber": ["pseudo_huber"], "lpips": ["lpips"],
             "lpips-huber": ["lpips", "pseudo_huber"], "lpips-huber-1/t": ["lpips", "pseudo_huber"]}
    return [f"loss_{n}" for n in names.get(kind, [])]
