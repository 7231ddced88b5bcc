"""One GPU per job: exclusive per-device locks for stage processes that run side by side.

Snakemake counts GPUs (`snakemake --cores all --resources gpu=4` runs at most four `gpu=1` jobs at once) but
does not say which GPU a job gets. `claim_gpus(k)` does: it takes an exclusive, non-blocking `fcntl.flock` on
one lock file per device (`<lock dir>/gpu-<i>.lock`) for the first k free devices, points CUDA_VISIBLE_DEVICES
at them and keeps the locks until the process exits. The kernel drops a flock when its holder dies, kill -9
included, so a crashed job never leaves a device taken.

- It must run before CUDA is initialised in the process (setting CUDA_VISIBLE_DEVICES afterwards does nothing);
  importing torch is fine, touching `torch.cuda` (is_available, device_count, tensors) is not. It raises
  `GPUClaimError` when CUDA is already up.
- A process whose CUDA_VISIBLE_DEVICES is already set (by the user, by Slurm's `--gpus`, or by a parent that
  claimed GPUs for it, e.g. the torchrun wrapper below) is left alone: its devices are returned as they are.
- Devices are counted without CUDA: `$RFPP_NUM_GPUS` if set (tests), else the lines of `nvidia-smi -L`; with
  none (no driver, a CPU machine) `claim_gpus` returns [] and changes nothing: the stage runs on the CPU.
- Device indices follow `nvidia-smi` (PCI bus order); CUDA_DEVICE_ORDER=PCI_BUS_ID is set so CUDA agrees.
- When fewer than k devices are free the call waits, polling, until they are, or until `timeout` seconds
  (`$RFPP_GPU_TIMEOUT`; unset: wait for ever) have passed, then raises `GPUClaimError` naming the holders.
  It takes all k locks or none (no hold-and-wait, so two multi-GPU jobs cannot deadlock).
- The lock directory is `$RFPP_GPU_LOCK_DIR`, else /tmp/rfpp-gpu-locks: machine-local, shared by every user
  of the machine (created world-writable with the sticky bit).

A process that needs k GPUs for child processes (torchrun) claims them in a parent that holds the locks for
the children's lifetime: `python -m rfpp.devices --gpus 4 -- torchrun --nproc_per_node 4 -m cli.main train …`.

`resolve_device(config.device)` is the one place that turns the profile's `device` into a torch.device, for
every stage: `auto` is CUDA when there is a GPU, else the CPU; `cuda`, `cuda:K` and `cpu` are checked against
this machine (`DeviceError` names what is there).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rfpp import lifeline
from rfpp.lifeline import child_preexec

if TYPE_CHECKING:
    import torch

LOCK_DIR_ENV = "RFPP_GPU_LOCK_DIR"
NUM_GPUS_ENV = "RFPP_NUM_GPUS"
TIMEOUT_ENV = "RFPP_GPU_TIMEOUT"
DEFAULT_LOCK_DIR = Path("/tmp/rfpp-gpu-locks")
POLL_SECONDS = 0.25


class GPUClaimError(RuntimeError):
    """GPUs could not be claimed: too many asked for, none free before the timeout, or CUDA already initialised."""


class DeviceError(ValueError):
    """The profile's `device` names no device of this machine (the CLI reports it as bad configuration, exit 2)."""


@dataclass
class GPUClaim:
    """Devices held by this process and the open lock files that hold them."""

    devices: list[int]
    lock_files: list[int] = field(default_factory=list)
    pinned: bool = False  # CUDA_VISIBLE_DEVICES was set from outside; nothing is locked

    def release(self) -> None:
        """Drop the locks (closing the files is enough for flock)."""
        while self.lock_files:
            fd = self.lock_files.pop()
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)


_CLAIM: GPUClaim | None = None


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def count_gpus() -> int:
    """Number of GPUs on this machine, without initialising CUDA: $RFPP_NUM_GPUS, else `nvidia-smi -L`."""
    given = os.environ.get(NUM_GPUS_ENV)
    if given not in (None, ""):
        try:
            n = int(given)
        except ValueError as err:
            raise GPUClaimError(f"{NUM_GPUS_ENV}={given!r} is not a whole number") from err
        return max(n, 0)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def pinned_devices() -> list[int] | None:
    """The devices CUDA_VISIBLE_DEVICES names, when it is set (None when it is not).

    Numeric entries give their index; UUID or MIG entries give their position in the list."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if all(p.lstrip("-").isdigit() for p in parts):
        ids = [int(p) for p in parts]
        # CUDA ignores everything from the first invalid (negative) index on.
        return ids[: next((i for i, d in enumerate(ids) if d < 0), len(ids))]
    return list(range(len(parts)))


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch build: then CUDA is not up either
        return False


def _open_lock(directory: Path, device: int) -> int:
    path = directory / f"gpu-{device}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holders(directory: Path, n: int) -> str:
    """'gpu 0: pid 123, gpu 1: pid 456' from the pid each holder wrote into its lock file."""
    parts = []
    for i in range(n):
        with contextlib.suppress(OSError):
            text = (directory / f"gpu-{i}.lock").read_text().strip()
            parts.append(f"gpu {i}: {text or 'held'}")
    return ", ".join(parts) or "unknown holders"


def _ensure_dir(directory: Path) -> None:
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if created:
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o1777)


def _grab(directory: Path, n: int, k: int) -> tuple[list[int], list[int]] | None:
    """Lock k free devices out of n, all or none: (device ids, lock fds), or None when fewer than k are free."""
    got: list[tuple[int, int]] = []
    for device in range(n):
        fd = _open_lock(directory, device)
        if _try_lock(fd):
            got.append((device, fd))
            if len(got) == k:
                break
        else:
            os.close(fd)
    if len(got) < k:
        for _, fd in got:
            os.close(fd)
        return None
    for _, fd in got:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    return [d for d, _ in got], [fd for _, fd in got]


def claim_gpus(k: int = 1, *, timeout: float | None = None, quiet: bool = False) -> list[int]:
    """Claim k GPUs for this process (see the module docstring); returns their indices ([] on a CPU machine).

    Idempotent: a second call returns the devices already held. `timeout` (seconds; default $RFPP_GPU_TIMEOUT,
    unset = wait for ever) bounds the wait for free devices. The locks are released at exit (or by
    `release_gpus()`)."""
    global _CLAIM
    if k <= 0:
        return []
    if _CLAIM is not None:
        return list(_CLAIM.devices)
    pinned = pinned_devices()
    if pinned is not None:
        _CLAIM = GPUClaim(devices=pinned, pinned=True)
        return list(pinned)
    n = count_gpus()
    if n == 0:
        return []
    if k > n:
        raise GPUClaimError(f"{k} GPUs asked for, but this machine has {n}")
    if _cuda_initialized():
        raise GPUClaimError("claim_gpus() must run before CUDA is initialised (CUDA_VISIBLE_DEVICES set later "
                            "is ignored); call it at the start of the process")
    if timeout is None:
        env_timeout = os.environ.get(TIMEOUT_ENV)
        timeout = float(env_timeout) if env_timeout not in (None, "") else None
    directory = lock_dir()
    _ensure_dir(directory)
    deadline = None if timeout is None else time.monotonic() + timeout
    said = False
    while True:
        grabbed = _grab(directory, n, k)
        if grabbed is not None:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise GPUClaimError(f"no {k} free GPU(s) out of {n} within {timeout:g} s (locks in {directory}: "
                                f"{_holders(directory, n)}); another job holds them - lower snakemake's "
                                f"--resources gpu=… to the number of GPUs, or raise ${TIMEOUT_ENV}")
        if not said and not quiet:
            print(f"rfpp: waiting for {k} free GPU(s) out of {n} (locks in {directory})", file=sys.stderr, flush=True)
            said = True
        time.sleep(POLL_SECONDS)
    devices, fds = grabbed
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    _CLAIM = GPUClaim(devices=devices, lock_files=fds)
    atexit.register(release_gpus)
    if not quiet:
        print(f"rfpp: using GPU {','.join(map(str, devices))} (CUDA_VISIBLE_DEVICES)", file=sys.stderr, flush=True)
    return list(devices)


def release_gpus() -> None:
    """Release the GPUs this process claimed (CUDA_VISIBLE_DEVICES is left as it is)."""
    global _CLAIM
    if _CLAIM is not None:
        _CLAIM.release()
        _CLAIM = None


@contextlib.contextmanager
def gpus(k: int = 1, *, timeout: float | None = None) -> Iterator[list[int]]:
    """`with gpus(2) as ids:` claims like `claim_gpus` and releases on leaving the block."""
    held_before = _CLAIM is not None
    ids = claim_gpus(k, timeout=timeout)
    try:
        yield ids
    finally:
        if not held_before:
            release_gpus()


def claim_for_device(device: str | None, k: int = 1) -> list[int]:
    """What a stage calls first: claim k GPUs when its configured device is 'auto' (or unset); else nothing."""
    if device not in (None, "", "auto"):
        return []
    return claim_gpus(k)


def resolve_device(name: str | None, local_rank: int | None = None) -> torch.device:
    """`device` of the profile → torch.device: 'auto' (or unset) is CUDA when available, else the CPU; 'cuda' gets
    index `local_rank` when one is given (a torchrun process); a CUDA device this machine lacks is a DeviceError."""
    import torch

    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise DeviceError(f"device {name!r} is not a device ({err}); use auto, cpu, cuda or cuda:K") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for, but CUDA is not available on this machine; "
                              "use device=auto or device=cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {str(device)!r} was asked for, but this process sees {count} CUDA "
                              f"device(s) (cuda:0..cuda:{count - 1}); use device=auto or another index")
    return device


def run_with_gpus(k: int, command: list[str], timeout: float | None = None) -> int:
    """Claim k GPUs, run `command` with CUDA_VISIBLE_DEVICES set to them, hold the locks until it ends.

    The lock files are inherited by the command; the command gets SIGTERM when this process dies (kill -9
    included: rfpp.lifeline), and SIGINT/SIGTERM are passed on. Returns the command's exit status."""
    claim_gpus(k, timeout=timeout)
    fds = list(_CLAIM.lock_files) if _CLAIM is not None else []
    proc = subprocess.Popen(command, pass_fds=fds, preexec_fn=child_preexec)  # it dies with this process

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    code = proc.wait()
    release_gpus()
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    """`python -m rfpp.devices [--gpus K] [--timeout S] -- COMMAND …`: run COMMAND on K claimed GPUs.

    Without a command, claim, print the devices and exit (a check of the lock directory)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rfpp.devices", description=main.__doc__)
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs to claim (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help=f"seconds to wait (default ${TIMEOUT_ENV})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    lifeline.install()  # under Snakemake: stop (and stop the command) when Snakemake is gone
    try:
        if not command:
            print(",".join(map(str, claim_gpus(args.gpus, timeout=args.timeout, quiet=True))))
            return 0
        return run_with_gpus(args.gpus, command, timeout=args.timeout)
    except GPUClaimError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
