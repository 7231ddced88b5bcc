"""The noise of pair i, regenerated anywhere from (pairs seed, i); it is never stored.

Sample i's noise is `torch.randn(shape)` from a CPU `torch.Generator` seeded with `noise_seed(seed, i)`,
a SplitMix64 hash of the two numbers; a class-conditional teacher's label for sample i is drawn from a
second generator seeded with `noise_seed(seed, i, stream=1)`. Any process (a data-loader worker, another
node) gets bit-identical noise for the same (seed, i), independent of batching and sharding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def noise_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit generator seed for sample `index` of a pair set with seed `seed` (stream 0 noise, 1 labels)."""
    if seed < 0 or index < 0 or stream < 0:
        raise ValueError(f"seed, index and stream must be non-negative, got {seed}, {index}, {stream}")
    h = _splitmix64(_splitmix64(_splitmix64(seed) ^ index) ^ stream)
    return h & ((1 << 63) - 1)


NOISE_RECIPE = ("torch.randn(shape, generator=torch.Generator('cpu').manual_seed(noise_seed(seed, i))), "
                "noise_seed = SplitMix64(SplitMix64(SplitMix64(seed) ^ i) ^ 0) & (2^63-1)")


def make_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Noise of the given samples, float32 on the CPU, shape (len(indices), *shape)."""
    out = torch.empty((len(indices), *shape), dtype=torch.float32)
    gen = torch.Generator("cpu")
    for row, index in enumerate(indices):
        gen.manual_seed(noise_seed(seed, int(index)))
        torch.randn(tuple(shape), generator=gen, out=out[row])
    return out


def make_labels(seed: int, indices: Sequence[int], label_dim: int) -> torch.Tensor:
    """Uniform class labels of the given samples (int64, shape (N,)); -1 for an unconditional teacher."""
    if label_dim == 0:
        return torch.full((len(indices),), -1, dtype=torch.int64)
    gen = torch.Generator("cpu")
    labels = torch.empty(len(indices), dtype=torch.int64)
    for row, index in enumerate(indices):
        gen.manual_seed(noise_seed(seed, int(index), stream=1))
        labels[row] = torch.randint(label_dim, (1,), generator=gen)[0]
    return labels


def noise_fingerprint(seed: int, shape: Sequence[int], count: int = 4) -> str:
    """sha256 of the first `count` noises: recorded in the manifest, re-checked by readers."""
    return hashlib.sha256(make_noise(seed, range(count), shape).numpy().tobytes()).hexdigest()
