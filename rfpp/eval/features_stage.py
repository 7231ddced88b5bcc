"""The features stage: results/<profile>/features/classifier.pt, the digits classifier that serves as perceptual
network and FID feature network (rfpp.eval.digits_classifier).

Provenance: the file records `features_fingerprint` (stage "features": the seed, data, eval.feature_resolution
and eval.feature_steps settings, and the stage's own training seed); an existing file that verifies and carries the same
fingerprint is kept, any other is made again, with a line naming what differs (rfpp.provenance.kept). The stage
holds features/.classifier.pt.lock while it works and opens one MLflow run (rfpp.tracking.stage_run).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rfpp.checkpoints import CheckpointError
from rfpp.config import Config
from rfpp.eval.digits_classifier import FORMAT, STAND_IN_NOTE, VERSION, build_feature_net, read_feature_net_file
from rfpp.paths import ProfilePaths
from rfpp.provenance import difference, fingerprint, kept, output_lock, stage_settings
from rfpp.tracking import stage_run


class FeatureNetError(ValueError):
    """A feature network that trained, but not well enough (held-out accuracy below the required minimum)."""


def features_fingerprint(config: Config, seed: int) -> dict[str, Any]:
    """The feature network's fingerprint: its profile sections (eval.feature_steps among them) and its seed."""
    settings = {**stage_settings(config, "features"), "features": {"seed": seed}}
    return fingerprint("features", f"{FORMAT}/{VERSION}", settings)


def kept_record(path: Path, expected: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The record of the file at `path` when it verifies and carries fingerprint `expected` (it is then kept);
    else None, saying why through `log` when a file is there."""
    if not path.exists():
        return None
    try:
        payload = read_feature_net_file(path)
        why = difference(payload.get("fingerprint"), expected)
    except CheckpointError as err:
        why = f"it cannot be used: {err}"
    if not kept(f"feature network {path}", why, log):
        return None
    return {"accuracy": payload["accuracy"], **payload["train"], "path": str(path)}


def run_features(config: Config, *, out: str | Path | None = None, seed: int | None = None,
                 min_accuracy: float = 0.9, progress: bool = True, log: Callable[[str], None] = print
                 ) -> dict[str, Any]:
    """Keep or make the feature network at `out` (default results/<profile>/features/classifier.pt): trained for
    eval.feature_steps steps with `seed` (default the profile's seed) at eval.feature_resolution (default
    data.resolution).
    Returns its record; a held-out accuracy below `min_accuracy` is a FeatureNetError (its MLflow run fails)."""
    path = Path(out or ProfilePaths.of(config.profile).features)
    resolution = config.eval.feature_resolution or config.data.resolution
    seed = config.seed if seed is None else seed
    expected = features_fingerprint(config, seed)
    with output_lock(path.parent / f".{path.name}.lock", f"the feature network {path}"), \
            stage_run(config, "features") as run:
        record = kept_record(path, expected, log)
        if record is None:
            record = build_feature_net(config.data.dataset, resolution, path, seed=seed,
                                       steps=config.eval.feature_steps, progress=progress, fingerprint=expected)
        run.log_metrics({"accuracy": record["accuracy"], "train_accuracy": record["train_accuracy"],
                         "seconds": record["seconds"]})
        run.set_tags({"rfpp.features.path": record["path"], "rfpp.features.note": STAND_IN_NOTE})
        log(json.dumps({k: record[k] for k in ("path", "accuracy", "num_train", "num_heldout", "seconds")}))
        log(f"digits classifier: held-out accuracy {record['accuracy']:.2%} on {record['num_heldout']} images; "
            f"written to {record['path']}")
        if record["accuracy"] < min_accuracy:  # inside the run: it ends FAILED with the reason
            raise FeatureNetError(f"held-out accuracy {record['accuracy']:.2%} is below --min-accuracy "
                                  f"{min_accuracy:.0%}")
    return record
