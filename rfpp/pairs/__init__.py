"""(noise, image) pairs made by a teacher: sharded, resumable, verifiable; noise regenerated from (seed, i)."""

from rfpp.lazy import exports, names

_IMPORTS = {
    "generator": ("SAMPLERS", "nfe_of", "teacher_function"),
    "manifest": ("PairDataset", "finalize", "read_manifest", "spec_from_manifest"),
    "noise": ("make_labels", "make_noise", "noise_fingerprint", "noise_seed"),
    "shards": ("PairSetError", "PairSpec", "generate_shard", "shard_files", "shard_is_finished", "spec_fingerprint"),
}
__all__ = names(_IMPORTS)
__getattr__ = exports(__name__, _IMPORTS)  # on first use: rfpp.pairs.kinds loads without torch
