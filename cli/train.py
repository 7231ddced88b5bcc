"""`rfpp train`: one round of Reflow for one arm (or every arm of the profile, one after the other)."""

from __future__ import annotations

import typer

from cli.common import EXIT_FAILURE, EXIT_USAGE, DryRunOpt, OverridesArg, ProfileOpt, fail, resolve

HELP = """One round of Reflow (2-rectified flow++) for one arm of the profile, or for every arm in turn.

Each arm trains once per training seed (train.seeds; --train-seed picks one) into
results/<profile>/train/<arm>/seed<k>/: config.yaml, checkpoints/step-*.pt (model, EMA, optimizer, loss
scaler, RNG states, data position, config; the last train.keep_last and every train.keep_every kept) and,
at the end, final.pt (the EMA student as an rfpp model file). Progress goes to MLflow (RFPP_TRACKING=off
disables it).

Existing checkpoints need --resume (continue exactly where the newest checkpoint that verifies stopped;
a corrupted newer one is skipped and named; the teacher's weights are then never loaded) or --restart
(start from the arm's init; the old checkpoints are moved to checkpoints.previous/ once the teacher, the
pairs and the perceptual network are checked, and deleted when the new run writes its first checkpoint).
--resume with no checkpoint starts from the arm's init. A checkpoint made from other inputs (pairs remade,
another teacher) is refused. Checkpoints and final.pt carry the sha256 of their tensors and the run's
fingerprint (settings and inputs). One process at a time trains an arm: a second one fails at once naming
the first one's pid.

Many GPUs: torchrun --nproc_per_node 4 -m cli.main train --profile cifar10 --arm rfpp
(multi-node: torchrun's --nnodes/--node_rank/--rdzv_endpoint). train.batch is the global batch; each of
the W processes takes batch/W, in micro-batches of train.micro_batch (gradient accumulation). Rank 0 alone
writes and logs.

Exit codes: 0 done, 1 a failure (non-finite loss, missing or corrupted teacher/pairs/perceptual weights/
checkpoints, the arm being trained by another process), 2 bad usage or configuration (unknown arm,
checkpoints without --resume, a checkpoint made with other settings or inputs)."""


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)
    def train(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
              arm: str = typer.Option(None, help="Training arm (a key of train.arms); default: every arm in turn."),
              train_seed: int = typer.Option(None, "--train-seed", min=0,
                                             help="Training seed (one of train.seeds); default: every seed in turn."),
              resume: bool = typer.Option(False, help="Continue from the arm's newest checkpoint."),
              restart: bool = typer.Option(False, help="Start over (the old checkpoints are set aside, then "
                                                       "deleted at the new run's first checkpoint)."),
              until: int = typer.Option(None, help="Stop after this step (checkpoint written, no final model); "
                                                   "continue later with --resume."),
              progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
        config = resolve(profile, overrides, dry_run)
        if resume and restart:
            fail("--resume and --restart exclude each other", EXIT_USAGE)
        arms = list(config.train.arms)
        if arm is not None and arm not in arms:
            fail(f"unknown arm {arm!r}; the arms of profile {config.profile!r} are: {', '.join(arms)}", EXIT_USAGE)
        seeds = list(config.train.seeds)
        if train_seed is not None and train_seed not in seeds:
            fail(f"training seed {train_seed} is not in train.seeds {seeds}; give one of them (or add it to the "
                 "profile)", EXIT_USAGE)

        from rfpp.checkpoints import CheckpointError
        from rfpp.config import ConfigError
        from rfpp.devices import DeviceError
        from rfpp.losses import PerceptualWeightsNotFoundError
        from rfpp.pairs import PairSetError
        from rfpp.provenance import LockedError
        from rfpp.tracking import TrackingError
        from rfpp.train import NonFiniteLossError, ResumeError, TrainSetupError, dist, train_arm

        try:
            env = dist.setup(config.device)
        except (DeviceError, RuntimeError) as err:
            fail(str(err), EXIT_USAGE)
        prefix = f"[rank {env.rank}] " if env.distributed else ""
        try:
            for name in [arm] if arm is not None else arms:
                for seed in [train_seed] if train_seed is not None else seeds:
                    train_arm(config, name, resume=resume, restart=restart, until=until, progress=progress, env=env,
                              seed=seed)
        except (ConfigError, ResumeError) as err:
            fail(prefix + str(err), EXIT_USAGE)
        except (NonFiniteLossError, CheckpointError, TrainSetupError, PairSetError, PerceptualWeightsNotFoundError,
                TrackingError, LockedError) as err:
            fail(prefix + str(err), EXIT_FAILURE)
        finally:
            dist.teardown()
