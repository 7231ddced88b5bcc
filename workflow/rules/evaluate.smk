rule sample:
    """Few-step samples of one arm at one NFE (.npz, with its metadata .json and grid .png beside it)."""
    input:
        STUDENT,
    output:
        samples=f"{SAMPLES}.npz",
        meta=f"{SAMPLES}.json",
        grid=f"{SAMPLES}.png",
    params:
        sections=section("sample"),
    resources:
        **stage_resources("sample", gpu=1),
    shell:
        "rfpp sample {RFPP} --arm {wildcards.arm} --nfe {wildcards.nfe}"


rule fid:
    """FID of one sample set, with its full protocol, as json (DVC's metrics)."""
    input:
        f"{SAMPLES}.npz",
        [FEATURES] if FID_FEATURES else [],
    output:
        FID,
    params:
        sections=section("fid"),
    resources:
        **stage_resources("fid", gpu=1),
    shell:
        "rfpp fid {RFPP} --arm {wildcards.arm} --nfe {wildcards.nfe}"


rule report:
    """report.md and its plots (report/*.png) over every arm and NFE."""
    input:
        expand(FID, arm=ARMS, nfe=NFES),
        expand(f"{SAMPLES}.json", arm=ARMS, nfe=NFES),
    output:
        report=REPORT,
        plots=directory(f"{RESULTS}/report"),
    resources:
        **stage_resources("report"),
    shell:
        "rfpp report {RFPP}"
