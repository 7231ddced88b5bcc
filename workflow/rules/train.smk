# One round of Reflow per arm. train.gpus (default 1) GPUs per job: with more than one, the GPUs are claimed
# as a set (rfpp.devices) and torchrun starts one process per GPU.
if TRAIN_GPUS > 1:
    TRAIN_CMD = (f"python -m rfpp.devices --gpus {TRAIN_GPUS} -- torchrun --standalone --nproc_per_node {TRAIN_GPUS} "
                 f"-m cli.main train")
else:
    TRAIN_CMD = "rfpp train"


rule train:
    """Train one arm's student from the pairs; final.pt is its EMA weights."""
    input:
        MANIFEST,
        TEACHER,
        [FEATURES] if PERCEPTUAL_FEATURES else [],
    output:
        STUDENT,
    params:
        sections=section("train"),
    resources:
        **stage_resources("train", gpu=TRAIN_GPUS),
    shell:
        "{TRAIN_CMD} {RFPP} --arm {wildcards.arm} {TRAIN_MODE} --no-progress"
