# rfpp pipeline: teacher -> pairs (sharded) -> train (per arm) -> sample (per NFE) -> fid -> report.
# Config comes from params/<profile>.yaml (snakemake --config profile=cifar10); rules only call `rfpp`.
include: "workflow/rules/common.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        f"{RESULTS}/report.md",
