rule pairs_shard:
    input:
        f"{RESULTS}/teacher/teacher.pt",
    output:
        f"{RESULTS}/pairs/shard-{{shard}}.npz",
    resources:
        gpu=1,
    shell:
        "rfpp pairs --profile {PROFILE} --shard {wildcards.shard} --num-shards {NUM_SHARDS}"


rule pairs:
    input:
        expand(f"{RESULTS}/pairs/shard-{{shard}}.npz", shard=range(NUM_SHARDS)),
    output:
        f"{RESULTS}/pairs/manifest.json",
    shell:
        "rfpp pairs --profile {PROFILE} --finalize"
