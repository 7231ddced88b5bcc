"""A teacher for data that has none: a 1-rectified flow (flow matching on independent noise–data pairs).

Convention (docs/conventions.md): x_t = (1−t)·x + t·z with z ~ N(0, I) drawn independently of the image x,
t ~ U[1e−5, 1−1e−5], and the network (an EDM-preconditioned velocity, the same form the student of
Reflow uses) regresses v = z − x with a mean squared error. Adam with a short linear warm-up and an
exponential moving average of the weights; the EMA network is the teacher.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from rfpp.nets import EDMDenoiser, EDMVelocity, build_network
from rfpp.timesteps import sample_timesteps


@dataclass
class FlowTrainResult:
    """The EMA network and the training record."""

    ema_net: torch.nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·net, parameters and floating buffers."""
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), net.buffers(), strict=True):
        e.copy_(b)


def train_rectified_flow(images: torch.Tensor, labels: torch.Tensor | None, arch: str, net_kwargs: dict,
                         steps: int, batch: int, lr: float, ema_decay: float, seed: int = 0,
                         device: str | torch.device = "cpu", warmup: int = 100, progress: bool = True,
                         log: Callable[[int, dict], None] | None = None) -> FlowTrainResult:
    """Train a 1-rectified flow on `images` (N, C, H, W) in [−1, 1] (labels (N,) int or None).

    Deterministic given `seed` on the CPU. `log(step, metrics)` is called every 50 steps.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"teacher steps and batch must be at least 1, got {steps} and {batch}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"teacher EMA decay must be in [0, 1), got {ema_decay}")
    device = torch.device(device)
    torch.manual_seed(seed)
    net = build_network(arch, **net_kwargs).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    velocity = EDMVelocity(EDMDenoiser(net))
    label_dim = int(net_kwargs.get("label_dim", 0))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    data = images.to(device)
    onehot = (torch.nn.functional.one_hot(labels.long(), label_dim).float().to(device)
              if label_dim and labels is not None else None)
    result = FlowTrainResult(ema_net=ema)
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc="teacher (1-rectified flow)", disable=not progress)
    for step in bar:
        idx = torch.randint(len(data), (batch,), generator=gen)
        x = data[idx.to(device)]
        z = torch.randn(x.shape, generator=gen).to(device)
        t = sample_timesteps(batch, "uniform", generator=gen).to(device)
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x + tb * z
        cl = onehot[idx.to(device)] if onehot is not None else None
        loss = (velocity(x_t, t, cl) - (z - x)).square().mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"teacher training diverged at step {step} (loss {loss.item()}); "
                                     "lower teacher.lr")
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / max(1, warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, net, ema_decay)
        result.losses.append(loss.item())
        if step % 50 == 0 or step == steps:
            recent = sum(result.losses[-50:]) / len(result.losses[-50:])
            bar.set_postfix(loss=f"{recent:.4f}")
            if log is not None:
                log(step, {"teacher/loss": recent, "teacher/lr": opt.param_groups[0]["lr"]})
    result.seconds = time.perf_counter() - start
    result.images_per_second = steps * batch / max(result.seconds, 1e-9)
    return result
