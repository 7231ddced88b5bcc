#!/usr/bin/env bash
# Snakemake runs this inside the new environment, from its working directory (the project's root, where the
# Snakefile is): the environment gets this checkout of rfpp and the versions pyproject.toml pins.
set -euo pipefail
python -m pip install --quiet -e .
