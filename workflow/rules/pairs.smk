rule pairs_shard:
    input:
        f"{RESULTS}/teacher/teacher.pt",
    output:
        f"{RESULTS}/pairs/shard-{{shard}}.json",
    resources:
        gpu=1,
    shell:
        "rfpp pairs --profile {PROFILE} --shard {wildcards.shard} --num-shards {NUM_SHARDS} --no-progress"


rule pairs:
    input:
        expand(f"{RESULTS}/pairs/shard-{{shard}}.json", shard=range(NUM_SHARDS)),
    output:
        f"{RESULTS}/pairs/manifest.json",
    shell:
        "rfpp pairs --profile {PROFILE} --finalize --num-shards {NUM_SHARDS}"
