# The profile and its parameters. Rules read PARAMS only to name their outputs (arms, NFEs, shards), to
# declare resources and to know which optional stages exist; everything else is the `rfpp` command's job.
import json
import os
import shlex

import yaml
from snakemake.utils import validate

from rfpp.lifeline import ENV_PARENT, anchor_value
from rfpp.provenance import STAGE_SECTIONS

# Every job's `rfpp` watches this process and stops when it is gone (kill -9 included): no orphan trains on.
os.environ[ENV_PARENT] = anchor_value()

PROFILE = str(config.get("profile", "digits"))
PARAMS_FILE = str(config.get("params", f"params/{PROFILE}.yaml"))
with open(PARAMS_FILE) as _handle:
    PARAMS = yaml.safe_load(_handle)
validate(PARAMS, "../schemas/params.schema.yaml", set_default=False)

RESULTS = f"results/{PARAMS['profile']}"
RFPP = f"--profile {shlex.quote(PARAMS_FILE)}"  # every rule's `rfpp <stage> {RFPP} …` (quoted: paths with spaces)
ARMS = list(PARAMS["train"]["arms"])
NFES = [int(k) for k in PARAMS["sample"]["nfe"]]
NUM_SHARDS = int(PARAMS["pairs"]["num_shards"])
TRAIN_GPUS = int(PARAMS["train"].get("gpus", 1))
# `--config resume=true`: training continues from an arm's checkpoints (after a crash or a time limit)
# instead of starting over; the settings must then be the ones the checkpoints were made with.
TRAIN_MODE = "--resume" if str(config.get("resume", "false")).lower() in ("1", "true", "yes") else "--restart"

# The digits classifier (`rfpp features`) serves as perceptual network and/or FID feature network.
PERCEPTUAL_FEATURES = PARAMS["train"].get("perceptual") == "digits-classifier"
FID_FEATURES = PARAMS.get("eval", {}).get("feature_net") == "digits-classifier"
FEATURES = f"{RESULTS}/features/classifier.pt"

TEACHER = f"{RESULTS}/teacher/teacher.pt"
SHARD_RECORD = f"{RESULTS}/pairs/shard-{{shard}}.json"
SHARD_FILES = [f"{RESULTS}/pairs/shard-{{shard}}.{part}.npy" for part in ("images", "labels")]
MANIFEST = f"{RESULTS}/pairs/manifest.json"
STUDENT = f"{RESULTS}/train/{{arm}}/final.pt"
SAMPLES = f"{RESULTS}/samples/{{arm}}/nfe{{nfe}}"
FID = f"{RESULTS}/fid/{{arm}}-nfe{{nfe}}.json"
REPORT = f"{RESULTS}/report.md"


def section(stage):
    """The profile sections a stage depends on (rfpp.provenance.STAGE_SECTIONS, the same list its outputs'
    fingerprints use), as one string: a change re-runs the rule (rerun trigger 'params'), as DVC's `params:` does."""
    def lookup(dotted):
        node = PARAMS
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return json.dumps({name: lookup(name) for name in STAGE_SECTIONS[stage]}, sort_keys=True)


wildcard_constraints:
    arm="|".join(re.escape(arm) for arm in ARMS),
    nfe=r"\d+",
    shard=r"\d+",
