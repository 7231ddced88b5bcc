"""The pairs in a deterministic, endless, resumable order, each rank its own part of every global batch.

The order is one global stream: position p holds pair `perm_e[p mod N]` where e = p // N is the epoch and
perm_e a permutation of the N pairs drawn from a generator seeded by (seed, e). Step s consumes positions
[s·B, (s + 1)·B) (B = the global batch); rank r takes the r-th of W equal slices of that range and cuts it into
micro-batches of `micro` pairs. The data position of a run is therefore simply `step · B`: a resumed run
starts the sampler there, and the global batch of a step does not depend on the number of processes.
Data-loader workers regenerate each pair's noise from (pairs seed, index) (rfpp.pairs), so nothing random
happens in a worker; they are still seeded from (seed, rank, worker) for any future use.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rfpp.pairs.noise import noise_seed

STREAM_ORDER = 7


class InfiniteSampler(Sampler[int]):
    """Endless pair indices of rank `rank` from step `start_step` on (see the module docstring)."""

    def __init__(self, size: int, batch: int, rank: int = 0, world: int = 1, seed: int = 0, start_step: int = 0):
        if size < 1:
            raise ValueError("the pair set is empty")
        if batch % world:
            raise ValueError(f"the global batch {batch} does not split evenly over {world} processes")
        self.size, self.batch, self.rank, self.world = size, batch, rank, world
        self.seed, self.start_step = seed, start_step
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the pairs in epoch `epoch` (cached)."""
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(noise_seed(self.seed, epoch, stream=STREAM_ORDER))
            self._perm = torch.randperm(self.size, generator=gen)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def index_at(self, position: int) -> int:
        """The pair at global stream position `position`."""
        epoch, offset = divmod(position, self.size)
        return int(self.permutation(epoch)[offset])

    def __iter__(self) -> Iterator[int]:
        per_rank = self.batch // self.world
        step = self.start_step
        while True:
            first = step * self.batch + self.rank * per_rank
            for position in range(first, first + per_rank):
                yield self.index_at(position)
            step += 1


def seed_worker(worker_id: int) -> None:
    """Seed a data-loader worker's torch and Python RNGs from the loader's per-iterator base seed."""
    seed = torch.initial_seed() % 2**63
    random.seed(seed)


def make_loader(dataset: Dataset, batch: int, micro: int, rank: int, world: int, seed: int, start_step: int,
                num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `dataset` yielding this rank's micro-batches (noise, image, label) from `start_step` on."""
    sampler = InfiniteSampler(len(dataset), batch, rank, world, seed, start_step)
    gen = torch.Generator().manual_seed(noise_seed(seed, rank, stream=STREAM_ORDER + 1))
    return DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      drop_last=False, worker_init_fn=seed_worker if num_workers else None, generator=gen,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
