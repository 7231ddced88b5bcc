"""Pair noise regenerated from recorded numpy PCG64 states: the noise of pair sets made by the paper's code.

The paper's `generate_edm.py` records, for every pair, the 128-bit state and increment of the numpy PCG64
generator that drew its noise (a 32-byte `.bin` in `z.zip`: two big-endian unsigned 128-bit integers); its data
loader sets a generator to that state and draws `standard_normal((C, H, W))` in float64, then casts to float32.
rfpp keeps those states in a shard file `shard-<k>.states.npy`, uint64 (N, 4) = (state high, state low,
increment high, increment low), and regenerates the noise the same way, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

KIND = "pcg64-states"
RECORD_BYTES = 32
RECIPE = ("numpy.random.Generator(PCG64) set to the recorded (state, inc), has_uint32=0; "
          "standard_normal((C, H, W)) in float64, then cast to float32")
_MASK64 = (1 << 64) - 1


def states_file(pairs_dir: str | Path, shard: int) -> Path:
    """Shard `shard`'s PCG64 states: uint64 (N_k, 4)."""
    return Path(pairs_dir) / f"shard-{shard}.states.npy"


def parse_record(data: bytes, name: str = "record") -> tuple[int, int]:
    """A 32-byte record -> (state, inc); ValueError naming `name` for a record of another size."""
    if len(data) != RECORD_BYTES:
        raise ValueError(f"{name} holds {len(data)} bytes, not a {RECORD_BYTES}-byte PCG64 record (two big-endian "
                         "128-bit integers: state, increment); the noise archive is damaged or of another format")
    return int.from_bytes(data[:16], "big"), int.from_bytes(data[16:], "big")


def pack_states(states: Sequence[tuple[int, int]]) -> np.ndarray:
    """[(state, inc), …] -> uint64 (N, 4) (high and low words of each)."""
    out = np.empty((len(states), 4), dtype=np.uint64)
    for row, (state, inc) in enumerate(states):
        out[row] = (state >> 64, state & _MASK64, inc >> 64, inc & _MASK64)
    return out


def unpack_state(row: np.ndarray) -> tuple[int, int]:
    """One uint64 (4,) row -> (state, inc)."""
    hi, lo, ihi, ilo = (int(v) for v in row)
    return (hi << 64) | lo, (ihi << 64) | ilo


def noise_from_state(state: int, inc: int, shape: Sequence[int]) -> np.ndarray:
    """The noise a PCG64 generator at (state, inc) draws: float64 standard normals cast to float32."""
    bit_generator = np.random.PCG64()
    bit_generator.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
                           "has_uint32": 0, "uinteger": 0}
    return np.random.Generator(bit_generator).standard_normal(tuple(shape)).astype(np.float32)


def make_noise(states: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """Noise of the pairs whose states are the rows of `states` (uint64 (N, 4)): float32 (N, *shape)."""
    return torch.from_numpy(np.stack([noise_from_state(*unpack_state(r), shape) for r in states])
                            if len(states) else np.zeros((0, *shape), np.float32))


def noise_fingerprint(states: np.ndarray, shape: Sequence[int], count: int = 4) -> str:
    """sha256 of the first `count` noises (what the manifest records and readers re-check)."""
    return hashlib.sha256(make_noise(states[:count], shape).numpy().tobytes()).hexdigest()
