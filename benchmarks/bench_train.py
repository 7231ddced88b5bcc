"""Training-step benchmark: images/s and peak memory of `rfpp.train`'s own optimisation step.

What is timed is `rfpp.train.loop.StepRunner` — the step `rfpp train` runs: counter-seeded dropout and closed-form
U-shaped timesteps on the device, x_t and v, the student (EDMVelocity) forward, the ReflowLoss (here
`lpips-huber-1/t` with VGG16 LPIPS at 224, the paper's CIFAR-10 setting) forward, backward, the all-reduced loss
check (one host sync), Adam (fused on CUDA) and the EMA update. Data are synthetic tensors already on the device
(the data loader runs in worker processes and is not what limits the step).

    python benchmarks/bench_train.py                              # this CPU: tiny net + a 1-step CIFAR row
    python benchmarks/bench_train.py --device cuda --nets cifar10 --precision fp32,bf16 --compile both

VGG16 weights: the real ones when they are in the torch hub cache, otherwise a random-weight VGG16 written into a
temporary TORCH_HOME (speed does not depend on the values; the note column says which). FLOPs/img: docs/conventions.md's
~220 GFLOP for the CIFAR-10 net with LPIPS at 224 (net fwd 42.8, VGG16 fwd 30.7); counted with FlopCounterMode for
the tiny net. "% bf16 peak" is against the card's dense bf16 peak (H200 790 TFLOP/s, H100 989). Peak memory is
torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from presets import NETS  # noqa: E402

from rfpp.config import load_config  # noqa: E402
from rfpp.losses import LPIPS, ReflowLoss, vgg16_cache_path  # noqa: E402
from rfpp.train.dist import DistEnv  # noqa: E402
from rfpp.train.loop import StepRunner, freeze_unused  # noqa: E402
from rfpp.train.setup import EMA, build_optimizer, build_student  # noqa: E402

BF16_PEAK_TFLOPS = {"H200": 790.0, "H100": 989.0, "A100": 312.0}
DESIGN_GFLOP_PER_IMAGE = {"cifar10": 220.0}
COLUMNS = ["net", "loss", "precision", "compile", "batch", "steps", "ms/step", "img/s", "GFLOP/img", "TFLOP/s",
           "% bf16 peak", "peak mem GiB", "note"]


@contextlib.contextmanager
def vgg_weights():
    """Yield a note; provide a random-weight VGG16 in a temporary TORCH_HOME when the real one is not cached."""
    if vgg16_cache_path().exists():
        yield "real VGG16"
        return
    old = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="rfpp-bench-vgg-") as home:
        import torchvision

        (Path(home) / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(torchvision.models.vgg16(weights=None).state_dict(),
                   Path(home) / "hub" / "checkpoints" / vgg16_cache_path().name)
        os.environ["TORCH_HOME"] = home
        try:
            yield "random-weight VGG16"
        finally:
            if old is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = old


def count_gflop(runner: StepRunner, batch: tuple[torch.Tensor, ...]) -> float:
    """FLOPs of one step on one image (forward + backward; optimizer excluded), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    one = tuple(b[:1] for b in batch)
    with FlopCounterMode(display=False) as counter:
        runner.micro_step(one, 0, 0, sync=True)
    runner.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def bench(net_name: str, loss_kind: str, precision: str, compile_: bool, batch: int, steps: int, warmup: int,
          device: torch.device, count: bool) -> dict[str, object]:
    preset = NETS[net_name]
    over = [f"train.batch={batch}", f"train.precision={precision}", f"train.compile={str(compile_).lower()}",
            "train.channels_last=" + ("true" if device.type == "cuda" else "false")]
    config = load_config("cifar10", over)
    config.train.arms = {"bench": config.train.arms["rfpp"]}
    config.train.arms["bench"].loss = loss_kind
    torch.manual_seed(0)
    student = build_student(preset.arch, dict(preset.kwargs), state=None).to(device)
    if config.train.channels_last:
        student.to(memory_format=torch.channels_last)
    freeze_unused(student, preset.image_shape, 0, device)
    perceptual = LPIPS(pool="avg", progress=False) if "lpips" in loss_kind else None
    loss_fn: torch.nn.Module = ReflowLoss(loss_kind, perceptual=perceptual).to(device)
    model: torch.nn.Module = student
    if compile_:
        model, loss_fn = torch.compile(student), torch.compile(loss_fn)
    ema = EMA(student, config.train.ema)
    ema.module.to(device)
    optimizer = build_optimizer([p for p in student.parameters() if p.requires_grad], config.train, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    env = DistEnv(device=device)
    runner = StepRunner(model, student, loss_fn, optimizer, scaler, ema, config, "bench", env, accum=1,
                        precision=precision, channels_last=config.train.channels_last)
    gen = torch.Generator().manual_seed(0)
    shape = (batch, *preset.image_shape)
    data = (torch.randn(shape, generator=gen).to(device), (torch.rand(shape, generator=gen) * 2 - 1).to(device),
            torch.full((batch,), -1, dtype=torch.int64).to(device))

    def batches():
        while True:
            yield data

    it = batches()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup):
        runner(it, step)
    times = []
    for step in range(warmup, warmup + steps):
        sync()
        t0 = time.perf_counter()
        runner(it, step)
        sync()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gflop = DESIGN_GFLOP_PER_IMAGE.get(net_name) if "lpips" in loss_kind else None
    if gflop is None and count:
        gflop = count_gflop(runner, data)
    return {"sec": sec, "img_s": batch / sec, "gflop": gflop, "mem": mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nets", default=None, help="comma list of presets (default: small,cifar10)")
    parser.add_argument("--precision", default=None, help="comma list of fp32,bf16,fp16")
    parser.add_argument("--compile", default=None, choices=["off", "on", "both"])
    parser.add_argument("--loss", default="lpips-huber-1/t", help="loss of the cifar10 rows")
    parser.add_argument("--small-loss", default="pseudo-huber", help="loss of the small (digits-scale) rows")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU, 3 CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    nets = (args.nets or "small,cifar10").split(",")
    precisions = (args.precision or ("fp32,bf16" if gpu else "fp32")).split(",")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile or ("both" if gpu else "off")]
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    print(f"# rfpp training step — {name}, torch {torch.__version__}\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    with vgg_weights() as vgg_note:
        for net in nets:
            for precision in precisions:
                for comp in compiles:
                    if gpu:
                        batch, steps, warmup = NETS[net].batch_gpu if net != "cifar10" else 128, args.steps or 20, 3
                    elif net == "cifar10":
                        batch, steps, warmup = 2, args.steps or 1, 1
                    else:
                        batch, steps, warmup = NETS[net].batch_cpu, args.steps or 3, 1
                    loss = args.loss if net == "cifar10" else args.small_loss
                    note = vgg_note if "lpips" in loss else ""
                    try:
                        r = bench(net, loss, precision, comp, batch, steps, warmup, device, count=net != "cifar10")
                    except Exception as err:  # keep the sweep going (OOM, compile failure)
                        print(f"| {net} | {loss} | {precision} | {comp} | {batch} | {steps} | – | – | – | – | – "
                              f"| – | failed: {type(err).__name__}: {str(err).splitlines()[0][:80]} |", flush=True)
                        if gpu:
                            torch.cuda.empty_cache()
                        continue
                    tflops = r["img_s"] * r["gflop"] / 1e3 if r["gflop"] else None
                    cells = [net, loss, precision, "yes" if comp else "no", str(batch), str(steps),
                             f"{r['sec'] * 1e3:.1f}", f"{r['img_s']:.1f}",
                             f"{r['gflop']:.3g}" if r["gflop"] else "–", f"{tflops:.3g}" if tflops else "–",
                             f"{100 * tflops / peak:.1f}" if tflops and peak else "–",
                             f"{r['mem']:.2f}" + ("" if gpu else " (RSS)"), note]
                    print("| " + " | ".join(cells) + " |", flush=True)
                    if gpu:
                        torch._dynamo.reset()
                        torch.cuda.empty_cache()
    if peak:
        print(f"\nbf16 peak {peak:.0f} TFLOP/s = {peak * 1e3 / 220:.0f} img/s at docs/conventions.md's 220 GFLOP/img")


if __name__ == "__main__":
    main()
