rule teacher:
    """The teacher: a 1-rectified flow trained on the data (digits) or an EDM snapshot, downloaded and converted."""
    output:
        TEACHER,
    params:
        sections=section("teacher"),
    resources:
        **stage_resources("teacher", gpu=1 if PARAMS.get("teacher", {}).get("source", "train") == "train" else 0),
    shell:
        "rfpp teacher {RFPP} --no-progress"


rule features:
    """The digits classifier: perceptual network (train.perceptual) and FID features (eval.feature_net)."""
    output:
        FEATURES,
    params:
        sections=section("features"),
    resources:
        **stage_resources("features"),
    shell:
        "rfpp features {RFPP}"
