rule teacher:
    """The teacher: a 1-rectified flow trained on the data (digits) or an EDM snapshot, downloaded and converted."""
    output:
        STAGES["teacher"].outs,
    params:
        sections=section("teacher"),
    conda:
        "../envs/rfpp.yaml"
    log:
        STAGES["teacher"].log(PATHS),
    resources:
        **stage_resources("teacher", gpu=STAGES["teacher"].gpu),
    shell:
        STAGES["teacher"].snakemake_shell()


if "features" in STAGES:

    rule features:
        """The digits classifier: perceptual network (train.perceptual) and FID features (eval.feature_net)."""
        output:
            STAGES["features"].outs,
        params:
            sections=section("features"),
        conda:
            "../envs/rfpp.yaml"
        log:
            STAGES["features"].log(PATHS),
        resources:
            **stage_resources("features"),
        shell:
            STAGES["features"].snakemake_shell()
