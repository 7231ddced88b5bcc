"""Training checkpoints: everything a run needs to continue exactly, sealed, written atomically, pruned to the last k.

A checkpoint is train/<arm>/checkpoints/step-<8 digits>.pt, a `torch.save`d dict read with weights_only=True:
    {"format": "rfpp.train-checkpoint", "version": 1, "arm": name, "step": completed steps,
     "arch", "net_kwargs", "sigma_data": the student's network,
     "model": the student's weights (EDMVelocity state dict), "ema": the EMA's, "optimizer": Adam's state,
     "scaler": the fp16 loss scaler's state (or None), "rng": every rank's RNG states (list, rank order),
     "data": {"position": pairs consumed = step·batch, "batch", "seed", "world"}, "skipped": non-finite steps
     skipped, "t_hist": the histogram of the timesteps drawn so far, "rank_checksums": `state_checksum` of the
     weights on every rank (equal when the ranks are in sync), "config": the resolved configuration
     (Config.to_dict()), "inputs": what the run read ({"pairs", "teacher"[, "perceptual"]}: fingerprint ids or
     sha256, see rfpp.train.loop), "metrics": the last logged metrics, "versions": {...},
     "tensors_sha256": the digest of every tensor in it (rfpp.provenance.seal)}
Reading one (`read_checkpoint`) checks that digest, that the rank checksums agree and that they are the checksum
of the stored weights: flipped bytes are found, never resumed from. `latest_checkpoint` falls back to the newest
checkpoint that verifies and says which file it skipped and why.
Kept: the newest `keep_last`, and every one whose step is a multiple of `keep_every` (when > 0).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from rfpp.checkpoints import CheckpointError, atomic_torch_save, safe_torch_load
from rfpp.provenance import seal, tensor_bytes, verify_sealed

FORMAT = "rfpp.train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the bytes of every tensor of a state dict, in its order (rfpp.provenance.tensor_bytes: views, no
    copies): equal on ranks that are in sync, and the same after a save and a load."""
    digest = hashlib.sha256()
    for value in state.values():
        digest.update(tensor_bytes(value))
    return digest.hexdigest()


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
    """Seal and write the checkpoint of payload["step"] atomically, then delete the ones no longer kept."""
    payload = seal({"format": FORMAT, "version": VERSION, **payload})
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
    """Load and verify one training checkpoint: CheckpointError naming the file when it is not one, when its tensors
    do not hash to its `tensors_sha256`, or when its rank checksums differ from each other or from its weights'."""
    payload = safe_torch_load(path, "training checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfpp training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is a training checkpoint of version {payload.get('version')}; "
                              f"this rfpp reads version {VERSION}")
    verify_sealed(payload, path, "training checkpoint", error=CheckpointError)
    sums, got = list(payload.get("rank_checksums") or []), state_checksum(payload["model"])
    if not sums or any(s != got for s in sums):
        raise CheckpointError(f"training checkpoint {path} is inconsistent: its rank checksums {sums} are not all the "
                              f"checksum of its weights ({got}); delete it and resume from an earlier one")
    return payload


def checkpoint_metrics(path: Path) -> dict[str, Any]:
    """The metrics a training checkpoint recorded at its step (loss, images/s, …), read without reading its tensors
    (memory-mapped, not hashed): for display only, as in the report; anything that uses the weights reads them
    through `read_checkpoint`, which verifies them."""
    payload = safe_torch_load(path, "training checkpoint", mmap=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfpp training checkpoint")
    return dict(payload.get("metrics") or {})


def latest_checkpoint(directory: Path, say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint in `directory` that verifies (None when there is no checkpoint file at all).

    A newer file that does not verify (truncated, flipped bytes, …) is skipped in favour of the one before, and
    `say` (default: print on stderr) names it and why; when checkpoint files exist but none verifies, this raises
    CheckpointError naming them: a run never silently starts over.
    """
    say = say or (lambda msg: print(msg, file=sys.stderr))
    found = list_checkpoints(directory)
    errors = []
    for _, path in reversed(found):
        try:
            payload = read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            say(f"skipping checkpoint {path.name}: {err}")
            continue
        if errors:
            say(f"falling back to {path.name}, the newest checkpoint that verifies")
        payload["path"] = str(path)
        return payload
    if found:
        raise CheckpointError(f"no checkpoint in {directory} verifies: {' | '.join(errors)}; delete them and start "
                              "over with --restart")
    return None
