"""Core speed benchmark: network forward and forward+backward through `EDMVelocity`, and timestep drawing.

Prints markdown tables (one row per network × dtype × memory layout × compile × pass) with time per image,
images/s, FLOPs per image (counted with `torch.utils.flop_counter.FlopCounterMode`), achieved GFLOP/s,
% of the bf16 peak (GPU) and peak memory (CUDA), then the cost of drawing training timesteps in closed
form against scipy's generic `rv_continuous` sampler (what the reference implementation did).

    python benchmarks/bench_core.py                         # CPU: fp32, eager, ~1-2 min on 2 cores
    python benchmarks/bench_core.py --device cuda --dtype fp32,bf16 --channels-last both --compile both

bf16 is `torch.autocast("cuda"|"cpu", dtype=torch.bfloat16)` around the whole step with float32 weights
(what mixed-precision training uses); EDMVelocity's preconditioning stays float32 as it casts back.
"fwd" = eval mode under `torch.inference_mode` (sampling / pair generation); "fwd+bwd" = train mode
(dropout on), v = velocity(x_t, t), loss = mean((v − target)²), loss.backward(); no optimizer step.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from presets import NETS, NetPreset  # noqa: E402

from rfpp.nets import EDMDenoiser, EDMVelocity, build_network  # noqa: E402
from rfpp.timesteps import sample_timesteps  # noqa: E402

# Dense bf16 matrix peak in TFLOP/s by device-name substring (docs/conventions.md uses 790 for the H200; an H100 SXM
# is specified at 989). Override with --peak-tflops.
BF16_PEAK_TFLOPS = {"H200": 790.0, "H100": 989.0, "A100": 312.0}

ROW_COLUMNS = ["net", "dtype", "layout", "compile", "pass", "batch", "ms/img", "img/s", "GFLOP/img", "GFLOP/s",
               "% bf16 peak", "peak mem GiB", "note"]


@dataclass
class Row:
    """One timed configuration."""

    net: str
    dtype: str
    layout: str
    compile: str
    pass_: str
    batch: int
    ms_per_img: float | None = None
    img_per_s: float | None = None
    gflop_per_img: float | None = None
    gflop_per_s: float | None = None
    pct_peak: float | None = None
    peak_mem_gib: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        """Markdown cells in ROW_COLUMNS order."""
        def f(v: float | None, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        return [self.net, self.dtype, self.layout, self.compile, self.pass_, str(self.batch),
                f(self.ms_per_img, ".3f"), f(self.img_per_s, ".1f"), f(self.gflop_per_img, ".2f"),
                f(self.gflop_per_s, ".1f"), f(self.pct_peak, ".1f"), f(self.peak_mem_gib, ".2f"), self.note]


def md_row(cells: list[str]) -> str:
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"


def md_header(columns: list[str]) -> str:
    """A markdown table header with its separator line."""
    return md_row(columns) + "\n" + md_row(["---"] * len(columns))


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """Comma-separated choices, validated."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: choose from {', '.join(allowed)}; got {text!r}")
    return items


def on_off(value: str) -> list[bool]:
    """'on' / 'off' / 'both' as the list of settings to sweep."""
    return {"on": [True], "off": [False], "both": [False, True]}[value]


def short_reason(exc: BaseException, limit: int = 90) -> str:
    """First line of an exception, shortened for a table cell."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc) else type(exc).__name__
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], iters: int, device: torch.device) -> list[float]:
    """Seconds per call of fn, one entry per call (CUDA events on GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        synchronize(device)
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def count_flops(velocity: nn.Module, shape: tuple[int, int, int], batch: int = 1) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per image, counted on CPU in float32 at the given batch."""
    velocity = velocity.float()
    x = torch.randn(batch, *shape)
    t = torch.full((batch,), 0.5)
    velocity.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        velocity(x, t)
    fwd = fc.get_total_flops() / batch
    velocity.train()
    with FlopCounterMode(display=False) as fc:
        v = velocity(x, t)
        v.square().mean().backward()
    velocity.zero_grad(set_to_none=True)
    return fwd, fc.get_total_flops() / batch


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """bf16 dense peak of the device in TFLOP/s (None when unknown, e.g. CPU without --peak-tflops)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


class CoreBench:
    """Runs the sweep for one network preset."""

    def __init__(self, preset: NetPreset, args: argparse.Namespace, device: torch.device, peak: float | None):
        self.preset = preset
        self.args = args
        self.device = device
        self.peak = peak
        self.batch = args.batch or (preset.batch_gpu if device.type == "cuda" else preset.batch_cpu)
        self.base = EDMVelocity(EDMDenoiser(build_network(preset.arch, **preset.kwargs)))
        self.params = sum(p.numel() for p in self.base.parameters())
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.base.parameters())
        if preset.expected_params is not None and self.params != preset.expected_params:
            raise AssertionError(f"{preset.name}: {self.params} parameters, expected {preset.expected_params}")
        self.flops_fwd, self.flops_fwdbwd = count_flops(copy.deepcopy(self.base), preset.image_shape)

    def info(self) -> dict:
        """Static facts about the network."""
        return dict(net=self.preset.name, arch=self.preset.arch, note=self.preset.note,
                    image_shape=list(self.preset.image_shape), params=self.params, param_bytes=self.param_bytes,
                    fwd_gflop_per_img=self.flops_fwd / 1e9, fwdbwd_gflop_per_img=self.flops_fwdbwd / 1e9,
                    kwargs=self.preset.kwargs)

    def configs(self) -> list[tuple[str, bool, bool]]:
        """(dtype, channels_last, compile) in sweep order: eager first, so a slow compile cannot hide them."""
        a = self.args
        return [(d, cl, c) for c in a.compile for d in a.dtype for cl in a.channels_last]

    def run_config(self, dtype: str, channels_last: bool, compiled: bool) -> list[Row]:
        """Time fwd and fwd+bwd for one configuration; failures become rows with a note."""
        rows = []
        for pass_ in ("fwd", "fwd+bwd"):
            row = Row(self.preset.name, dtype, "channels_last" if channels_last else "NCHW",
                      "on" if compiled else "off", pass_, self.batch)
            try:
                self._time_pass(row, dtype, channels_last, compiled)
            except Exception as exc:  # a failing row must not end the sweep
                oom = isinstance(exc, torch.OutOfMemoryError)
                prefix = "compile failed" if compiled and not oom else "failed"
                row.note = f"{prefix}: {'out of memory' if oom else short_reason(exc)}"
            finally:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
        return rows

    def _time_pass(self, row: Row, dtype: str, channels_last: bool, compiled: bool) -> None:
        dev = self.device
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(self.base).to(dev, memory_format=fmt)
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(self.batch, *self.preset.image_shape, device=dev, generator=gen)
        x = x.contiguous(memory_format=fmt)
        target = torch.randn(x.shape, device=dev, generator=gen).contiguous(memory_format=fmt)
        t = sample_timesteps(self.batch, "u_shaped", generator=gen, device=dev)
        autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext())
        if compiled:
            torch._dynamo.reset()
        fn_model = torch.compile(model, mode=self.args.compile_mode) if compiled else model

        if row.pass_ == "fwd":
            model.eval()

            def step() -> None:
                with torch.inference_mode(), autocast:
                    fn_model(x, t)
        else:
            model.train()
            params = [p for p in model.parameters()]

            def step() -> None:
                for p in params:
                    p.grad = None
                with autocast:
                    v = fn_model(x, t)
                    loss = (v.float() - target).square().mean()
                loss.backward()

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        warmup = max(self.args.warmup, 2 if compiled else 0)
        for _ in range(warmup):
            step()
        synchronize(dev)
        times = time_calls(step, self.args.iters, dev)
        sec = statistics.median(times)
        flops = self.flops_fwd if row.pass_ == "fwd" else self.flops_fwdbwd
        row.ms_per_img = sec / self.batch * 1e3
        row.img_per_s = self.batch / sec
        row.gflop_per_img = flops / 1e9
        row.gflop_per_s = flops * self.batch / sec / 1e9
        if self.peak:
            row.pct_peak = 100 * row.gflop_per_s / (self.peak * 1e3)
        if dev.type == "cuda":
            row.peak_mem_gib = torch.cuda.max_memory_allocated(dev) / 2**30
        if len(times) > 1:
            spread = (max(times) - min(times)) / sec * 100
            row.note = f"median of {len(times)}, spread {spread:.0f}%"


def make_scipy_sampler():
    """The reference's way: a scipy `rv_continuous` subclass with only `_pdf` (density ∝ e^{a t} on [0, 1]),
    so every draw inverts a numerically integrated CDF; then mirrored, shuffled, truncated and squeezed."""
    import numpy as np
    from scipy import stats

    class ExpDensity(stats.rv_continuous):
        def _pdf(self, x, a):
            return a / np.expm1(a) * np.exp(a * x)

    dist = ExpDensity(a=0.0, b=1.0, name="exp_density")

    def draw(n: int, a: float = 4.0) -> torch.Tensor:
        t = torch.from_numpy(dist.rvs(size=n, a=a)).float()
        t = torch.cat([t, 1 - t])
        t = t[torch.randperm(t.numel())][:n]
        return t * (1 - 2e-5) + 1e-5

    return draw


def bench_timesteps(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Milliseconds to draw args.timesteps_n U-shaped times: closed form (CPU and device) vs scipy."""
    n = args.timesteps_n
    out = []
    devices = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
    for dev in devices:
        gen = torch.Generator(device=dev).manual_seed(0)

        def draw(dev: torch.device = dev, gen: torch.Generator = gen) -> None:
            sample_timesteps(n, "u_shaped", generator=gen, device=dev)

        for _ in range(5):
            draw()
        times = time_calls(draw, args.timesteps_reps, dev)
        sec = statistics.median(times)
        out.append(dict(method="rfpp sample_timesteps (closed form)", device=str(dev), n=n, reps=len(times),
                        ms=sec * 1e3, us_per_sample=sec / n * 1e6))
    if args.scipy_reps > 0:
        draw_scipy = make_scipy_sampler()
        draw_scipy(8)
        times = time_calls(lambda: draw_scipy(n), args.scipy_reps, torch.device("cpu"))
        sec = statistics.median(times)
        out.append(dict(method="scipy rv_continuous(_pdf only).rvs (reference's way)", device="cpu", n=n,
                        reps=len(times), ms=sec * 1e3, us_per_sample=sec / n * 1e6))
    return out


def environment(device: torch.device, peak: float | None) -> dict:
    """What ran the benchmark."""
    env = dict(date=dt.datetime.now().astimezone().isoformat(timespec="seconds"), torch=torch.__version__,
               python=platform.python_version(), platform=platform.platform(), device=str(device),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), bf16_peak_tflops=peak)
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_precision=torch.get_float32_matmul_precision())
    else:
        env.update(device_name=platform.processor() or platform.machine())
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; defaults depend on the device (small and quick on CPU, a full sweep on GPU)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nets", default="cifar10,small", help=f"comma list of {', '.join(NETS)}")
    p.add_argument("--batch", type=int, default=None, help="batch for every net (default: per net and device)")
    p.add_argument("--dtype", default=None, help="comma list of fp32,bf16 (default: cpu fp32; cuda fp32,bf16)")
    p.add_argument("--channels-last", choices=["on", "off", "both"], default=None,
                   help="default: cpu off, cuda both")
    p.add_argument("--compile", choices=["on", "off", "both"], default=None, help="default: cpu off, cuda both")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: cpu 3, cuda 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: cpu 1, cuda 5)")
    p.add_argument("--timesteps-n", type=int, default=512, help="timesteps per draw")
    p.add_argument("--timesteps-reps", type=int, default=50)
    p.add_argument("--scipy-reps", type=int, default=3, help="scipy draws to time (0 skips)")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for the %% column")
    p.add_argument("--tf32", choices=["default", "on", "off"], default="default",
                   help="CUDA fp32 rows: torch's defaults (cuDNN TF32 on, matmul off), all on, or all off")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here (rewritten per row)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    gpu = args.device == "cuda"
    args.nets = parse_list(args.nets, tuple(NETS), "--nets")
    args.dtype = parse_list(args.dtype or ("fp32,bf16" if gpu else "fp32"), ("fp32", "bf16"), "--dtype")
    args.channels_last = on_off(args.channels_last or ("both" if gpu else "off"))
    args.compile = on_off(args.compile or ("both" if gpu else "off"))
    args.iters = args.iters if args.iters is not None else (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, optionally write JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if args.tf32 != "default":
            torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    peak = peak_tflops(device, args.peak_tflops)
    env = environment(device, peak)
    result: dict = dict(env=env, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                        nets=[], rows=[], timesteps=[])

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))

    print(f"# rfpp core benchmark — {env['device_name']} ({device}), torch {env['torch']}, "
          f"{env['torch_threads']} CPU threads, {env['date']}")
    if device.type == "cuda":
        print(f"cuDNN {env['cudnn']}, cudnn.benchmark on, cuDNN TF32 {env['cudnn_allow_tf32']}, "
              f"float32 matmul precision {env['matmul_precision']}; bf16 peak {peak} TFLOP/s")
    print()

    benches = []
    print("## Networks\n")
    print(md_header(["net", "arch", "image", "params", "param MiB (fp32)", "fwd GFLOP/img",
                     "fwd+bwd GFLOP/img", "fwd+bwd / fwd", "note"]))
    for name in args.nets:
        b = CoreBench(NETS[name], args, device, peak)
        benches.append(b)
        info = b.info()
        result["nets"].append(info)
        print(md_row([name, b.preset.arch, "×".join(map(str, b.preset.image_shape)), f"{b.params:,}",
                      f"{b.param_bytes / 2**20:.1f}", f"{b.flops_fwd / 1e9:.3f}", f"{b.flops_fwdbwd / 1e9:.3f}",
                      f"{b.flops_fwdbwd / b.flops_fwd:.2f}", b.preset.note]), flush=True)
    print("\nFLOPs: FlopCounterMode, float32, batch 1, eval (fwd) / train (fwd+bwd, counted, ≈3× fwd).\n")

    print("## Forward and forward+backward through EDMVelocity\n")
    print(md_header(ROW_COLUMNS), flush=True)
    for b in benches:
        for dtype, cl, comp in b.configs():
            for row in b.run_config(dtype, cl, comp):
                result["rows"].append(asdict(row))
                print(md_row(row.cells()), flush=True)
                save()

    n = args.timesteps_n
    print(f"\n## Drawing {n} U-shaped timesteps (a = 4)\n")
    print(md_header(["method", "device", "n", "reps", "ms per draw", "µs per sample"]))
    for ts in bench_timesteps(args, device):
        result["timesteps"].append(ts)
        print(md_row([ts["method"], ts["device"], str(ts["n"]), str(ts["reps"]), f"{ts['ms']:.3f}",
                      f"{ts['us_per_sample']:.3f}"]), flush=True)
    save()
    return 0 if any(r["ms_per_img"] is not None for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
