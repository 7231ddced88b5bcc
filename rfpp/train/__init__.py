"""One round of Reflow (2-rectified flow++): `train_arm(config, arm)` on one CPU or many GPUs under torchrun.

Modules: `loop` (the training loop and one optimisation step), `data` (the deterministic endless pair order),
`setup` (student, loss, perceptual network, Adam, LR schedule, EMA), `checkpoint` (sealed exact-resume checkpoints),
`dist` (processes, devices, counter-based seeds), `monitor` (straightness, sample grids, timestep histogram).
"""

from rfpp.train.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from rfpp.train.data import InfiniteSampler
from rfpp.train.dist import DistEnv, setup, teardown
from rfpp.train.loop import NonFiniteLossError, ResumeError, StepRunner, TrainResult, train_arm
from rfpp.train.setup import EMA, TrainSetupError, build_loss, build_perceptual, build_student, lr_at

__all__ = ["EMA", "DistEnv", "InfiniteSampler", "NonFiniteLossError", "ResumeError", "StepRunner", "TrainResult",
           "TrainSetupError", "build_loss", "build_perceptual", "build_student", "latest_checkpoint",
           "list_checkpoints", "lr_at", "read_checkpoint", "setup", "teardown", "train_arm"]
