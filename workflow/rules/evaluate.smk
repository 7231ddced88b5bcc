rule sample:
    """Few-step samples of one arm and training seed at every NFE of sample.nfe (each set an .npz, with its metadata
    .json and grid .png beside it), the student read once."""
    input:
        STAGES["sample"].deps,
    output:
        STAGES["sample"].outs,
    params:
        sections=section("sample"),
    conda:
        "../envs/rfpp.yaml"
    log:
        STAGES["sample"].log(PATHS),
    resources:
        **stage_resources("sample", gpu=STAGES["sample"].gpu),
    shell:
        STAGES["sample"].snakemake_shell()


rule fid:
    """FID of one arm and training seed's sample sets, one json per NFE with its full protocol (DVC's metrics)."""
    input:
        STAGES["fid"].deps,
    output:
        STAGES["fid"].outs,
    params:
        sections=section("fid"),
    conda:
        "../envs/rfpp.yaml"
    log:
        STAGES["fid"].log(PATHS),
    resources:
        **stage_resources("fid", gpu=STAGES["fid"].gpu),
    shell:
        STAGES["fid"].snakemake_shell()


rule report:
    """report.md and its plots (report/*.png) over every arm, training seed and NFE."""
    input:
        STAGES["report"].deps,
    output:
        STAGES["report"].outs[0],
        directory(STAGES["report"].outs[1]),
    conda:
        "../envs/rfpp.yaml"
    log:
        STAGES["report"].log(PATHS),
    resources:
        **stage_resources("report"),
    shell:
        STAGES["report"].snakemake_shell()
