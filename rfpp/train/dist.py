"""Processes, devices and seeds of a training run (one process, or many under `torchrun`).

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT, also across nodes); without them the
run is a single process. The backend is nccl on CUDA and gloo on the CPU. Rank 0 alone logs and writes.

Randomness is counter-based: the dropout masks and the timesteps of micro-batch `chunk` of step `step` are
drawn from generators seeded by `step_seed(seed, step, chunk, stream)`, where `chunk` numbers the micro-batches
of the global batch (rank·accumulation + micro-step). So a resumed run draws exactly what an uninterrupted
run would, whatever happened before, and one process with accumulation draws what several processes draw.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rfpp.devices import resolve_device
from rfpp.pairs.noise import noise_seed

STREAM_DROPOUT = 0
STREAM_TIMESTEPS = 1


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank, and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device_name: str = "auto") -> DistEnv:
    """Read torchrun's variables, pick the device, and join the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)  # DeviceError: the CLI's exit 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    if world > 1 and device.type == "cpu":
        # Share the cores of one machine between the processes on it.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def step_seed(seed: int, step: int, chunk: int, stream: int) -> int:
    """A 63-bit seed for the draws of micro-batch `chunk` of step `step` (stream: dropout or timesteps)."""
    return noise_seed(noise_seed(seed, step, stream=2 + stream), chunk)


def gather_objects(env: DistEnv, obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (a list of one object for a single process)."""
    if not env.distributed:
        return [obj]
    out: list[object] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def rng_state(device: torch.device) -> dict[str, object]:
    """This process's global RNG states (CPU, and the CUDA device's); stored in checkpoints."""
    state: dict[str, object] = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, object], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])  # type: ignore[arg-type]
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)  # type: ignore[arg-type]
