# rfpp pipeline: teacher -> [features] -> pairs (sharded) -> train (per arm) -> sample (per arm x NFE) -> fid -> report.
#
#   snakemake --cores all                                   # the digits profile (default), CPU, offline
#   snakemake --cores all --resources gpu=4 --config profile=cifar10   # four GPU jobs at once, one GPU each
#   snakemake --profile workflow/profiles/slurm --config profile=cifar10  # on a Slurm cluster
#
# Config: params/<profile>.yaml (--config profile=NAME, or --config params=path/to/profile.yaml), validated
# by rfpp.config. The DAG is stated once, in rfpp/dag.py: each rule takes its input, output, log and command
# from its stage there, and `rfpp dvc` writes dvc.yaml from the same list. docs/workflow.md has the details.
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        PATHS.report,
    default_target: True
