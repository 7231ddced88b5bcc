"""One round of Reflow (2-rectified flow++): `train_arm(config, arm)` on one CPU or many GPUs under torchrun.

Modules: `loop` (the training loop and one optimisation step), `data` (the deterministic endless pair order),
`setup` (student, loss, perceptual network, Adam, LR schedule, EMA), `checkpoint` (sealed exact-resume checkpoints),
`dist` (processes, devices, counter-based seeds), `monitor` (straightness, sample grids, timestep histogram).
"""

from rfpp.lazy import exports, names

_IMPORTS = {
    "checkpoint": ("checkpoint_metrics", "latest_checkpoint", "list_checkpoints", "read_checkpoint"),
    "data": ("InfiniteSampler",),
    "dist": ("DistEnv", "teardown"),  # not `setup`: rfpp.train.setup is the module
    "loop": ("NonFiniteLossError", "ResumeError", "StepRunner", "TrainResult", "train_arm"),
    "setup": ("EMA", "TrainSetupError", "build_loss", "build_perceptual", "build_student", "lr_at"),
}
__all__ = names(_IMPORTS)
__getattr__ = exports(__name__, _IMPORTS)  # on first use: rfpp.train.kinds loads without torch
