# Shared settings: the profile and its parameters, read the same way the CLI reads them.
import yaml

PROFILE = config.get("profile", "digits")
PARAMS = yaml.safe_load(open(f"params/{PROFILE}.yaml"))
RESULTS = f"results/{PROFILE}"
ARMS = list(PARAMS["train"]["arms"])
NFES = list(PARAMS["sample"]["nfe"])
NUM_SHARDS = int(PARAMS["pairs"]["num_shards"])
