"""(noise, image) pairs made by a teacher: sharded, resumable, verifiable; noise regenerated from (seed, i)."""

import lazy_loader

_IMPORTS = {
    "generator": ("SAMPLERS", "nfe_of", "teacher_function"),
    "manifest": ("PairDataset", "finalize", "read_manifest", "spec_from_manifest"),
    "noise": ("make_labels", "make_noise", "noise_fingerprint", "noise_seed"),
    "shards": ("PairSetError", "PairSpec", "generate_shard", "shard_files", "shard_is_finished", "spec_fingerprint"),
}
# Submodules load on first use (lazy_loader): rfpp.pairs.kinds, read by rfpp.config, loads without torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_IMPORTS)
