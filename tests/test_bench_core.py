"""Smoke test of benchmarks/bench_core.py in its tiny mode (a subprocess, small net, one iteration)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_core_tiny(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--device", "cpu", "--nets", "small",
           "--iters", "1", "--warmup", "0", "--batch", "2", "--threads", "1", "--timesteps-n", "32",
           "--timesteps-reps", "2", "--scipy-reps", "1", "--json", str(out_json)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()

    header = "| net | dtype | layout | compile | pass | batch | ms/img | img/s | GFLOP/img | GFLOP/s |"
    assert any(line.startswith(header) for line in lines), proc.stdout
    rows = [line for line in lines if line.startswith("| small | fp32 | NCHW | off |")]
    assert [r.split("|")[5].strip() for r in rows] == ["fwd", "fwd+bwd"], proc.stdout
    assert any(line.startswith("| rfpp sample_timesteps (closed form) | cpu | 32 |") for line in lines)
    assert any(line.startswith("| scipy rv_continuous") for line in lines)

    result = json.loads(out_json.read_text())
    assert [r["pass_"] for r in result["rows"]] == ["fwd", "fwd+bwd"]
    assert all(r["ms_per_img"] > 0 and r["gflop_per_s"] > 0 for r in result["rows"])
    (net,) = result["nets"]
    assert net["params"] > 0 and net["fwd_gflop_per_img"] > 0
    assert 2.5 < net["fwdbwd_gflop_per_img"] / net["fwd_gflop_per_img"] < 3.5
