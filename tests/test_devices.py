"""rfpp.devices: concurrent processes get distinct GPUs through per-device flocks (no GPU needed: RFPP_NUM_GPUS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rfpp import devices

ROOT = Path(__file__).resolve().parents[1]

# Claims k GPUs, prints their ids (or the error), then holds them until stdin closes.
HOLDER = """
import sys
from rfpp.devices import GPUClaimError, claim_gpus
import os
try:
    ids = claim_gpus(int(sys.argv[1]), timeout=float(sys.argv[2]), quiet=True)
except GPUClaimError as err:
    print("ERROR", err, flush=True)
    sys.exit(1)
print("GOT", ",".join(map(str, ids)), os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def gpu_env(tmp_path, monkeypatch):
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(RFPP_NUM_GPUS="4", RFPP_GPU_LOCK_DIR=str(tmp_path / "locks"), PYTHONPATH=str(ROOT))
    for key in ("RFPP_NUM_GPUS", "RFPP_GPU_LOCK_DIR"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_CLAIM", None)
    yield env
    devices.release_gpus()


def _start(env: dict, k: int = 1, timeout: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(k), str(timeout)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _answer(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    assert line, f"holder exited without an answer (rc {proc.poll()})"
    return line


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=30)


def test_four_processes_get_distinct_gpus_and_a_fifth_waits_then_times_out(gpu_env):
    procs = [_start(gpu_env) for _ in range(4)]
    try:
        answers = [_answer(p) for p in procs]
        ids = sorted(int(a.split()[1]) for a in answers)
        assert ids == [0, 1, 2, 3]
        for a in answers:  # CUDA_VISIBLE_DEVICES points at the claimed device
            _, got, visible = a.split()
            assert got == visible
        fifth = _start(gpu_env, timeout=1.0)
        t0 = time.monotonic()
        answer = _answer(fifth)
        assert answer.startswith("ERROR") and "no 1 free GPU(s) out of 4 within 1 s" in answer
        assert "pid" in answer  # names the holders
        assert time.monotonic() - t0 >= 0.9
        assert fifth.wait(timeout=30) == 1
    finally:
        _stop(procs)


def test_a_waiting_process_gets_the_gpu_of_a_killed_holder(gpu_env):
    procs = [_start(gpu_env) for _ in range(4)]
    try:
        owner = {int(_answer(p).split()[1]): p for p in procs}
        waiter = _start(gpu_env, timeout=60.0)
        time.sleep(0.5)
        assert waiter.poll() is None  # still waiting: every GPU is taken
        os.kill(owner[2].pid, signal.SIGKILL)  # flock is dropped by the kernel even on kill -9
        owner[2].wait(timeout=30)
        assert _answer(waiter).split()[1] == "2"
        procs.append(waiter)
    finally:
        _stop(procs)


def test_multi_gpu_claims_take_all_or_nothing(gpu_env):
    a = _start(gpu_env, k=3)
    try:
        assert _answer(a).split()[1] == "0,1,2"
        b = _start(gpu_env, k=2, timeout=0.5)  # only one left: it takes none and times out
        assert _answer(b).startswith("ERROR")
        c = _start(gpu_env, k=1, timeout=5)  # the one left is still free
        assert _answer(c).split()[1] == "3"
        _stop([c])
    finally:
        _stop([a])


def test_released_locks_are_reusable_in_process(gpu_env):
    assert devices.claim_gpus(2, quiet=True) == [0, 1]
    assert devices.claim_gpus(1) == [0, 1]  # idempotent: the held claim
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    other = _start(gpu_env, k=2, timeout=5)
    try:
        assert _answer(other).split()[1] == "2,3"
    finally:
        _stop([other])
    devices.release_gpus()
    os.environ.pop("CUDA_VISIBLE_DEVICES")
    with devices.gpus(4) as ids:
        assert ids == [0, 1, 2, 3]
    assert devices._CLAIM is None


def test_pinned_devices_and_cpu_machines_are_left_alone(gpu_env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert devices.claim_gpus(1) == [3, 1]
    assert not any(Path(gpu_env["RFPP_GPU_LOCK_DIR"]).glob("*.lock"))  # nothing was locked
    devices.release_gpus()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("RFPP_NUM_GPUS", "0")
    assert devices.claim_gpus(1) == []
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert devices.claim_for_device("cpu") == []
    monkeypatch.setenv("RFPP_NUM_GPUS", "2")
    with pytest.raises(devices.GPUClaimError, match="3 GPUs asked for, but this machine has 2"):
        devices.claim_gpus(3)


def test_wrapper_runs_a_command_on_claimed_gpus_and_holds_them(gpu_env):
    code = "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES']); sys.stdin.read()"
    wrapper = subprocess.Popen([sys.executable, "-m", "rfpp.devices", "--gpus", "2", "--", sys.executable, "-c",
                                code], env=gpu_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert wrapper.stdout.readline().strip() == "0,1"
        other = _start(gpu_env, k=1, timeout=5)
        assert _answer(other).split()[1] == "2"
        _stop([other])
    finally:
        _stop([wrapper])
    assert wrapper.returncode == 0
    fail = subprocess.run([sys.executable, "-m", "rfpp.devices", "--gpus", "1", "--", sys.executable, "-c",
                           "import sys; sys.exit(7)"], env=gpu_env)
    assert fail.returncode == 7


def test_resolve_device_is_the_one_reading_of_the_profiles_device():
    """`auto` follows the machine; cpu is cpu; a CUDA device the machine lacks and a name that is no device are
    DeviceErrors naming what to use instead (every stage, train's ranks included, goes through it)."""
    import torch

    from rfpp.devices import DeviceError, resolve_device

    has_cuda = torch.cuda.is_available()
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:K"):
        resolve_device("banana")
    if has_cuda:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
        assert resolve_device("cuda").index is None  # a single-process stage: the current device
        with pytest.raises(DeviceError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")
