"""Training checkpoints: everything a run needs to continue exactly, written atomically, pruned to the last k.

A checkpoint is train/<arm>/checkpoints/step-<8 digits>.pt, a `torch.save`d dict read with weights_only=True:
    {"format": "rfpp.train-checkpoint", "version": 1, "arm": name, "step": completed steps,
     "arch", "net_kwargs", "sigma_data": the student's network,
     "model": the student's weights (EDMVelocity state dict), "ema": the EMA's, "optimizer": Adam's state,
     "scaler": the fp16 loss scaler's state (or None), "rng": every rank's RNG states (list, rank order),
     "data": {"position": pairs consumed = step·batch, "batch", "seed", "world"}, "skipped": non-finite steps
     skipped, "t_hist": the histogram of the timesteps drawn so far, "rank_checksums": a checksum of the weights
     on every rank (equal when the ranks are in sync), "config": the resolved configuration (Config.to_dict()),
     "metrics": the last logged metrics, "versions": {...}}
Kept: the newest `keep_last`, and every one whose step is a multiple of `keep_every` (when > 0).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from rfpp.checkpoints import CheckpointError, atomic_torch_save, safe_torch_load

FORMAT = "rfpp.train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: Path, payload: dict[str, Any], keep_last: int, keep_every: int = 0) -> Path:
    """Write the checkpoint of payload["step"] atomically, then delete the ones no longer kept."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    path = atomic_torch_save(payload, checkpoint_path(directory, int(payload["step"])))
    prune(directory, keep_last, keep_every)
    return path


def prune(directory: Path, keep_last: int, keep_every: int = 0) -> None:
    found = list_checkpoints(directory)
    newest = {step for step, _ in found[-keep_last:]} if keep_last > 0 else set()
    for step, path in found:
        if step not in newest and not (keep_every > 0 and step % keep_every == 0):
            path.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check one training checkpoint (CheckpointError if it is not one)."""
    payload = safe_torch_load(path, "training checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfpp training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is a training checkpoint of version {payload.get('version')}; "
                              f"this rfpp reads version {VERSION}")
    return payload


def latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in `directory` (None when there is no checkpoint file at all).

    An unreadable newest file (a truncated copy, say) is skipped with a warning in favour of the one before;
    when checkpoint files exist but none can be read, this raises: a run never silently starts over.
    """
    found = list_checkpoints(directory)
    errors = []
    for _, path in reversed(found):
        try:
            payload = read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", stacklevel=2)
            continue
        payload["path"] = str(path)
        return payload
    if found:
        raise CheckpointError(f"no readable checkpoint in {directory}: {'; '.join(errors)}")
    return None
