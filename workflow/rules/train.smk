# One round of Reflow per arm and training seed (train.seeds). train.gpus (default 1) GPUs per job: with more
# than one, the GPUs are claimed as a set (rfpp.devices) and torchrun starts one process per GPU (rfpp.dag writes
# the command).
rule train:
    """Train one arm's student with one training seed from the pairs; final.pt is its EMA weights."""
    input:
        STAGES["train"].deps,
    output:
        STAGES["train"].outs,
    params:
        sections=section("train"),
    conda:
        "../envs/rfpp.yaml"
    log:
        STAGES["train"].log(PATHS),
    resources:
        **stage_resources("train", gpu=STAGES["train"].gpu),
    shell:
        STAGES["train"].snakemake_shell()
