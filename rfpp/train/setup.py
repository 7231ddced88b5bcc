"""What a training run is made of: the student, the loss and its perceptual network, Adam, the LR schedule, EMA.

The student is `EDMVelocity(EDMDenoiser(net))` with the teacher's architecture (its rfpp model file's `arch`
and `net_kwargs`, dropout replaced by train.dropout). init "teacher" copies the teacher's weights; "scratch"
keeps the layers' own (EDM) initialisation, drawn from `seed`. A resumed run builds the same network from the
checkpoint's own `arch`/`net_kwargs` and loads the checkpoint's weights: it never reads the teacher's.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfpp.checkpoints import load_model, load_state_strict, network_with_state
from rfpp.config import ArmConfig, Config, TrainConfig
from rfpp.losses import LPIPS, PERCEPTUAL_KINDS, FeatureLPIPS, ReflowLoss
from rfpp.nets import EDMDenoiser, EDMVelocity, build_network
from rfpp.paths import ProfilePaths


class TrainSetupError(RuntimeError):
    """Something a run needs is missing (teacher, perceptual network, …); the message says how to make it."""


def student_spec(teacher_path: Path, dropout: float) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict]:
    """(arch, net kwargs with train.dropout, the teacher's weights, the teacher file's info) of a teacher file."""
    teacher, info = load_model(teacher_path)
    kwargs = dict(info["net_kwargs"])
    if "dropout" in inspect.signature(type(teacher.net).__init__).parameters:
        kwargs["dropout"] = float(dropout)
    state = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    return info["arch"], kwargs, state, info


def build_student(arch: str, net_kwargs: dict[str, Any], sigma_data: float = 0.5,
                  state: dict[str, torch.Tensor] | None = None, seed: int = 0, source: str = "teacher") -> EDMVelocity:
    """The student in velocity form: holding `state` (the tensors themselves), or, with `state` None, a fresh EDM
    initialisation drawn from `seed`."""
    if state is not None:
        return EDMVelocity(EDMDenoiser(network_with_state(arch, net_kwargs, state, source), sigma_data=sigma_data))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(arch, **net_kwargs)
    return EDMVelocity(EDMDenoiser(net, sigma_data=sigma_data))


def load_feature_classifier(path: Path) -> nn.Module:
    """The digits classifier (made by `rfpp features`; rfpp.eval.digits_classifier.load_feature_net) as a frozen
    feature network: images in [−1, 1] → a list of feature maps."""
    try:
        from rfpp.eval.digits_classifier import load_feature_net
    except ImportError as err:
        raise TrainSetupError("train.perceptual=digits-classifier needs rfpp.eval.digits_classifier.load_feature_net, "
                              "which this installation lacks; use train.perceptual=lpips-vgg16") from err
    if not Path(path).exists():
        raise TrainSetupError(f"the digits classifier {path} does not exist; run `rfpp features` first")
    return load_feature_net(path)


def build_perceptual(config: Config, paths: ProfilePaths) -> nn.Module:
    """train.perceptual -> the perceptual module of the lpips terms: "lpips-vgg16" LPIPS (VGG16, avg pooling, the
    paper's), "lpips-vgg16-maxpool" LPIPS with max pooling (both at train.lpips_resize), "digits-classifier"
    FeatureLPIPS(the digits classifier of `rfpp features`)."""
    name = config.train.perceptual
    if name == "lpips-vgg16":
        return LPIPS(pool="avg", size=config.train.lpips_resize)
    if name == "lpips-vgg16-maxpool":
        return LPIPS(pool="max", size=config.train.lpips_resize)
    if name == "digits-classifier":
        return FeatureLPIPS(load_feature_classifier(paths.features), name="digits-classifier")
    raise TrainSetupError(f"unknown perceptual network {name!r}")


def build_loss(arm: ArmConfig, config: Config, paths: ProfilePaths) -> ReflowLoss:
    """The arm's ReflowLoss; the perceptual network is built only for the lpips kinds."""
    perceptual = build_perceptual(config, paths) if arm.loss in PERCEPTUAL_KINDS else None
    return ReflowLoss(arm.loss, perceptual=perceptual, huber_c_mode=arm.huber_c)


def build_optimizer(params: list[nn.Parameter], train: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam(lr, betas, eps): fused on CUDA, the foreach implementation elsewhere."""
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=train.lr, betas=tuple(train.betas), eps=train.eps,
                            fused=fused or None, foreach=None if fused else True)


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate of the update that completes step `step + 1`: linear warmup over `warmup` steps, then flat."""
    if train.warmup <= 0:
        return train.lr
    return train.lr * min(1.0, (step + 1) / train.warmup)


class EMA:
    """Exponential moving average of a module's floating-point parameters (float32 copies; buffers copied).

    After the update that completes step k: k ≤ ema_start -> the EMA is a copy of the weights; otherwise
    ema ← decay·ema + (1 − decay)·weights.
    """

    def __init__(self, module: nn.Module, decay: float, start: int = 0) -> None:
        self.decay, self.start = float(decay), int(start)
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        ema_p = list(self.module.parameters())
        src_p = [p.detach().float() for p in module.parameters()]
        if step <= self.start:
            torch._foreach_copy_(ema_p, src_p)
        else:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), module.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_state_strict(self.module, state, "the checkpoint's EMA")
