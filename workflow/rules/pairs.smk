# No pair rules when the profile's pairs.source names a pair set made elsewhere (training reads it).
if "pairs" in STAGES:

    rule pairs_shard:
        """One shard of (noise, image) pairs from the teacher: one job per shard, each on its own GPU."""
        input:
            STAGES["pairs_shard"].deps,
        output:
            STAGES["pairs_shard"].outs,
        params:
            sections=section("pairs_shard"),
        conda:
            "../envs/rfpp.yaml"
        log:
            STAGES["pairs_shard"].log(PATHS),
        resources:
            **stage_resources("pairs_shard", gpu=STAGES["pairs_shard"].gpu),
        shell:
            STAGES["pairs_shard"].snakemake_shell()


    rule pairs:
        """Verify every shard and write the manifest that training reads."""
        input:
            STAGES["pairs"].deps,
        output:
            STAGES["pairs"].outs,
        params:
            sections=section("pairs"),
        conda:
            "../envs/rfpp.yaml"
        log:
            STAGES["pairs"].log(PATHS),
        resources:
            **stage_resources("pairs"),
        shell:
            STAGES["pairs"].snakemake_shell()
