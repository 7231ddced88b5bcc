"""Pair-generation throughput: pairs/s and where the time goes (noise, sampler, writing), per dtype.

Runs the real pair path (rfpp.pairs.generate_shard with EDM's Heun sampler in σ) on a random-weight
teacher of the CIFAR-10 architecture (56.4M-parameter NCSN++, benchmarks/presets.py; every weight matrix
drawn N(0, 1/fan_in) so that no layer is zero) at the paper's
18 steps = 35 NFE, and reports how far bf16/fp16 teacher inference lands from float32 (PSNR of the
uint8 images over the same indices). A random-weight network makes noise-like images, so the PSNR
is indicative of arithmetic error only; with a real snapshot (--snapshot) it measures the real thing.

GPU, one call:  python benchmarks/bench_pairs.py --device cuda
CPU (quick):    python benchmarks/bench_pairs.py                (tiny counts, both nets)
FLOPs: one NFE of the CIFAR-10 net is 42.8 GFLOP per image, so 35 NFE ≈ 1.5 TFLOP per pair.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from presets import NETS  # noqa: E402

from rfpp.nets import EDMDenoiser, build_network  # noqa: E402
from rfpp.pairs import PairSpec, generate_shard, shard_files  # noqa: E402
from rfpp.sampling import edm_heun  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GFLOP_PER_NFE = {"cifar10": 42.79, "small": 0.05}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def make_teacher(net_name: str, snapshot: str | None, device: torch.device) -> EDMDenoiser:
    if snapshot:
        from rfpp.teachers import load_edm_snapshot

        return load_edm_snapshot(snapshot).to(device).eval()
    torch.manual_seed(0)
    preset = NETS[net_name]
    net = build_network(preset.arch, **preset.kwargs)
    with torch.no_grad():  # EDM zero-initialises output layers; give every matrix a trained-like scale
        for p in net.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, (p[0].numel()) ** -0.5)
    return EDMDenoiser(net).to(device).eval()


def run(denoiser: EDMDenoiser, dtype: str, steps: int, count: int, batch: int, device: torch.device,
        state: torch.dtype, channels_last: bool, compile_net: bool) -> tuple[dict, np.ndarray]:
    net = denoiser.net
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    runner = EDMDenoiser(torch.compile(net) if compile_net else net, denoiser.sigma_data, net_dtype=DTYPES[dtype])
    res, ch = denoiser.img_resolution, denoiser.img_channels
    label_dim = denoiser.label_dim

    def teacher(noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if channels_last:
            noise = noise.contiguous(memory_format=torch.channels_last)
        return edm_heun(runner, noise, num_steps=steps, class_labels=labels, state_dtype=state)

    spec = PairSpec(count=count, num_shards=1, chunk=batch, seed=1, shape=(ch, res, res), label_dim=label_dim)
    warm = PairSpec(count=batch, num_shards=1, chunk=batch, seed=2, shape=spec.shape, label_dim=label_dim)
    tmp = Path(tempfile.mkdtemp(prefix="rfpp-bench-pairs-"))
    try:
        generate_shard(tmp / "warmup", warm, 0, teacher, device=device, progress=False)
        start = time.perf_counter()
        record = generate_shard(tmp / "run", spec, 0, teacher, device=device, progress=False)
        wall = time.perf_counter() - start
        images = np.load(shard_files(tmp / "run", 0)["images"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    secs = record["seconds"]
    return {"wall": wall, **secs}, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nets", default=None, help="cifar10,small (default: cifar10 on GPU, both on CPU)")
    parser.add_argument("--dtypes", default=None, help="fp32,bf16,fp16 (default: all on GPU, fp32,bf16 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="EDM Heun steps (default 18 = 35 NFE; CPU: 2)")
    parser.add_argument("--count", type=int, default=None, help="pairs per row (default: GPU 8192, CPU 8)")
    parser.add_argument("--batch", type=int, default=None, help="chunk size (default: GPU 2048, CPU 4)")
    parser.add_argument("--state", choices=["float64", "float32"], default="float64", help="sampler state dtype")
    parser.add_argument("--channels-last", choices=["on", "off"], default=None)
    parser.add_argument("--compile", choices=["on", "off", "both"], default="off")
    parser.add_argument("--snapshot", default=None, help="a real EDM snapshot (path/URL/name) instead of random")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak (H200: 790)")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    nets = (args.nets or ("cifar10" if gpu else "cifar10,small")).split(",")
    dtypes = (args.dtypes or ("fp32,bf16,fp16" if gpu else "fp32,bf16")).split(",")
    channels_last = (args.channels_last or ("on" if gpu else "off")) == "on"
    compiles = {"on": [True], "off": [False], "both": [False, True]}[args.compile]
    state = torch.float64 if args.state == "float64" else torch.float32
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# pair generation — {name}, torch {torch.__version__}, state {args.state}, "
          f"channels_last {channels_last}\n")
    print("| net | dtype | compile | NFE | pairs | batch | pairs/s | noise % | sampler % | write % | "
          "TFLOP/s | % bf16 peak | PSNR vs fp32 (dB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for net_name in nets:
        steps = args.steps or (18 if gpu or net_name == "small" else 2)
        count = args.count or (8192 if gpu else (8 if net_name == "cifar10" else 512))
        batch = args.batch or (2048 if gpu else (4 if net_name == "cifar10" else 256))
        nfe = 2 * steps - 1
        denoiser = make_teacher(net_name, args.snapshot, device)
        reference = None
        for dtype in dtypes:
            for comp in compiles:
                try:
                    t, images = run(denoiser, dtype, steps, count, batch, device, state, channels_last, comp)
                except Exception as err:  # a failed configuration is a row, not the end of the sweep
                    print(f"| {net_name} | {dtype} | {comp} | {nfe} | {count} | {batch} | failed: "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:80]} |||||||")
                    continue
                if dtype == "fp32" and reference is None:
                    reference = images
                rate = count / t["wall"]
                parts = t["noise"] + t["sampler"] + t["write"]
                tflops = rate * nfe * GFLOP_PER_NFE.get(net_name, float("nan")) / 1e3
                peak = f"{100 * tflops / args.peak_tflops:.1f}" if gpu else "—"
                dev = "—" if reference is None or dtype == "fp32" else f"{psnr(images, reference):.1f}"
                print(f"| {net_name} | {dtype} | {comp} | {nfe} | {count} | {batch} | {rate:.1f} | "
                      f"{100 * t['noise'] / parts:.1f} | {100 * t['sampler'] / parts:.1f} | "
                      f"{100 * t['write'] / parts:.1f} | {tflops:.2f} | {peak} | {dev} |", flush=True)
    print("\nTarget (issue 3): ≥ 320 pairs/s for the CIFAR-10 teacher at 35 NFE on one H200 "
          "(the reference: 81 pairs/s).")


if __name__ == "__main__":
    main()
