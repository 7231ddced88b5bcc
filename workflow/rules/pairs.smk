rule pairs_shard:
    """One shard of (noise, image) pairs from the teacher: one job per shard, each on its own GPU."""
    input:
        TEACHER,
    output:
        record=SHARD_RECORD,
        arrays=SHARD_FILES,
    params:
        sections=section("pairs"),
    resources:
        **stage_resources("pairs_shard", gpu=1),
    shell:
        "rfpp pairs {RFPP} --shard {wildcards.shard} --num-shards {NUM_SHARDS} --no-progress"


rule pairs:
    """Verify every shard and write the manifest that training reads."""
    input:
        TEACHER,
        expand(SHARD_RECORD, shard=range(NUM_SHARDS)),
    output:
        MANIFEST,
    params:
        sections=section("pairs"),
    resources:
        **stage_resources("pairs"),
    shell:
        "rfpp pairs {RFPP} --finalize --num-shards {NUM_SHARDS}"
