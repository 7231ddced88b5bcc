"""(noise, image) pairs made by a teacher: sharded, resumable, verifiable; noise regenerated from (seed, i)."""

from rfpp.pairs.generator import SAMPLERS, nfe_of, teacher_function
from rfpp.pairs.manifest import PairDataset, finalize, read_manifest, spec_from_manifest
from rfpp.pairs.noise import make_labels, make_noise, noise_fingerprint, noise_seed
from rfpp.pairs.shards import (
    PairSetError,
    PairSpec,
    generate_shard,
    shard_files,
    shard_is_finished,
    spec_fingerprint,
)

__all__ = ["SAMPLERS", "PairDataset", "PairSetError", "PairSpec", "finalize", "generate_shard", "make_labels",
           "make_noise", "nfe_of", "noise_fingerprint", "noise_seed", "read_manifest", "shard_files",
           "shard_is_finished", "spec_fingerprint", "spec_from_manifest", "teacher_function"]
