"""`rfpp train`: one round of Reflow for one arm (or every arm of the profile, one after the other)."""

from __future__ import annotations

import typer

from cli.common import EXIT_FAILURE, EXIT_USAGE, DryRunOpt, OverridesArg, ProfileOpt, fail, resolve

HELP = """One round of Reflow (2-rectified flow++) for one arm of the profile, or for every arm in turn.

Writes results/<profile>/train/<arm>/: config.yaml, checkpoints/step-*.pt (model, EMA, optimizer, loss
scaler, RNG states, data position, config; the last train.keep_last and every train.keep_every kept) and,
at the end, final.pt (the EMA student as an rfpp model file). Progress goes to MLflow (RFPP_TRACKING=off
disables it).

Existing checkpoints need --resume (continue exactly where the newest one stopped; the teacher's weights
are then never loaded) or --restart (delete them and start from the arm's init). --resume with no
checkpoint starts from the arm's init.

Many GPUs: torchrun --nproc_per_node 4 -m cli.main train --profile cifar10 --arm rfpp
(multi-node: torchrun's --nnodes/--node_rank/--rdzv_endpoint). train.batch is the global batch; each of
the W processes takes batch/W, in micro-batches of train.micro_batch (gradient accumulation). Rank 0 alone
writes and logs.

Exit codes: 0 done, 1 a failure (non-finite loss, missing teacher/pairs/perceptual weights), 2 bad usage
or configuration (unknown arm, checkpoints without --resume, a checkpoint made with other settings)."""


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)
    def train(profile: str = ProfileOpt, overrides: list[str] = OverridesArg, dry_run: bool = DryRunOpt,
              arm: str = typer.Option(None, help="Training arm (a key of train.arms); default: every arm in turn."),
              resume: bool = typer.Option(False, help="Continue from the arm's newest checkpoint."),
              restart: bool = typer.Option(False, help="Delete the arm's checkpoints and start over."),
              until: int = typer.Option(None, help="Stop after this step (checkpoint written, no final model); "
                                                   "continue later with --resume."),
              progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
        config = resolve(profile, overrides, dry_run)
        if resume and restart:
            fail("--resume and --restart exclude each other", EXIT_USAGE)
        arms = list(config.train.arms)
        if arm is not None and arm not in arms:
            fail(f"unknown arm {arm!r}; the arms of profile {config.profile!r} are: {', '.join(arms)}", EXIT_USAGE)

        from rfpp.checkpoints import CheckpointError
        from rfpp.config import ConfigError
        from rfpp.losses import PerceptualWeightsNotFoundError
        from rfpp.pairs import PairSetError
        from rfpp.tracking import TrackingError
        from rfpp.train import NonFiniteLossError, ResumeError, TrainSetupError, dist, train_arm

        try:
            env = dist.setup(config.device)
        except RuntimeError as err:
            fail(str(err), EXIT_USAGE)
        prefix = f"[rank {env.rank}] " if env.distributed else ""
        try:
            for name in [arm] if arm is not None else arms:
                train_arm(config, name, resume=resume, restart=restart, until=until, progress=progress, env=env)
        except (ConfigError, ResumeError) as err:
            fail(prefix + str(err), EXIT_USAGE)
        except (NonFiniteLossError, CheckpointError, TrainSetupError, PairSetError, PerceptualWeightsNotFoundError,
                TrackingError) as err:
            fail(prefix + str(err), EXIT_FAILURE)
        finally:
            dist.teardown()
