"""One round of Reflow (2-rectified flow++): `train_arm(config, arm)` on one CPU or many GPUs under torchrun.

Modules: `loop` (the training loop and one optimisation step), `data` (the deterministic endless pair order),
`setup` (student, loss, perceptual network, Adam, LR schedule, EMA), `checkpoint` (sealed exact-resume checkpoints),
`dist` (processes, devices, counter-based seeds), `monitor` (straightness, sample grids, timestep histogram).
"""

import lazy_loader

_IMPORTS = {
    "checkpoint": ("latest_checkpoint", "list_checkpoints", "read_checkpoint"),
    "data": ("InfiniteSampler",),
    "dist": ("DistEnv", "setup", "teardown"),
    "loop": ("NonFiniteLossError", "ResumeError", "StepRunner", "TrainResult", "train_arm"),
    "setup": ("EMA", "TrainSetupError", "build_loss", "build_perceptual", "build_student", "lr_at"),
}
# Submodules load on first use (lazy_loader): rfpp.train.kinds, read by rfpp.config, loads without torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_IMPORTS)
