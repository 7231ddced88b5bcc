"""Provenance of every output: a fingerprint of what made it, the sha256 of its tensors, and a lock while it is made.

A *fingerprint* is a plain dict stored inside (or beside) an output:
    {"stage": "pairs", "format": "rfpp.pairs-shard/2",
     "settings": {"pairs": {...}}: the resolved profile sections the stage depends on (STAGE_SECTIONS),
     "inputs": {"teacher": "<sha256>", …}: the fingerprints or tensor digests of what it read,
     "id": sha256 of the canonical JSON of the three above}
A stage that finds an output whose fingerprint `id` differs from the one it would make redoes it or refuses,
with `difference()` naming the first setting or input that differs; it never reuses it silently.

Model files and checkpoints carry `tensors_sha256`, the digest of every tensor in them (name, dtype, shape,
bytes), checked on load: flipped bytes in the tensor data are found, not sampled from.

`output_lock(path)` is an exclusive flock on a lock file: a second process that wants to write the same output
fails at once naming the holder's pid; the kernel drops the lock when its process dies (kill -9 included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

# The profile sections each stage's output depends on: a change in any of them makes the output stale.
# Snakemake's `params:` and DVC's `params:` use the same lists (workflow/rules/common.smk).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "teacher": ("seed", "data", "teacher"),
    "features": ("seed", "data", "eval.feature_resolution", "eval.feature_steps"),
    "pairs": ("pairs",),
    "train": ("seed", "train"),
    "sample": ("sample",),
    "fid": ("data", "eval"),
}


class ProvenanceError(RuntimeError):
    """An output that is not what its settings or inputs say (stale, corrupted, or made by something else)."""


class LockedError(RuntimeError):
    """Another live process is writing the same output."""


# ------------------------------------------------------------------------------------------------ settings


def _plain(value: Any) -> Any:
    """JSON-ready copy: dataclasses to dicts, tuples to lists, non-finite floats to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def stage_settings(config: Any, stage: str, arm: str | None = None) -> dict[str, Any]:
    """The resolved profile sections `stage` depends on ({dotted section: value}); for "train" with an arm, only that
    arm's settings (the other arms do not make this student)."""
    values = _plain(config.to_dict() if hasattr(config, "to_dict") else config)
    out = {name: _lookup(values, name) for name in STAGE_SECTIONS[stage]}
    if stage == "train" and arm is not None:
        train = dict(out["train"])
        train["arms"] = {arm: train["arms"][arm]}
        out["train"] = train
    return out


def kept(what: str, why: str | None, log: Callable[[str], None]) -> bool:
    """Say whether an existing output stays (`why` None: its fingerprint is this run's) or is made again (`why`:
    `difference()`'s line); True when it stays."""
    if why is None:
        log(f"{what} is up to date (made with these settings); keeping it")
        return True
    log(f"{what} is out of date ({why}); making it again")
    return False


def canonical(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def fingerprint(stage: str, fmt: str, settings: Mapping[str, Any], inputs: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """The fingerprint record of an output (see the module docstring)."""
    body = {"stage": stage, "format": fmt, "settings": _plain(settings), "inputs": _plain(dict(inputs or {}))}
    return {**body, "id": hashlib.sha256(canonical(body).encode()).hexdigest()}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def difference(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> str | None:
    """None when the two fingerprints are the same; else what differs first, e.g.
    "pairs.seed=1 (recorded) vs 2 (now)" or "input teacher=ab12… vs cd34…"."""
    if not isinstance(recorded, Mapping) or "id" not in recorded:
        return "it carries no provenance record (made by an older rfpp, or not by rfpp)"
    if recorded.get("id") == expected.get("id"):
        return None
    if recorded.get("format") != expected.get("format"):
        return f"format {recorded.get('format')} (recorded) vs {expected.get('format')} (now)"
    for part, label in (("settings", ""), ("inputs", "input ")):
        old, new = _flat(recorded.get(part) or {}), _flat(expected.get(part) or {})
        for key in sorted(set(old) | set(new)):
            was, now = old.get(key, "<unset>"), new.get(key, "<unset>")
            if was != now:
                return f"{label}{key}={_short(was)} (recorded) vs {_short(now)} (now)"
    return "its fingerprint differs"


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text[:16] + "…" if isinstance(value, str) and len(value) == 64 else text[:80]


# ------------------------------------------------------------------------------------------------ tensors

_DIGEST_KEY = "tensors_sha256"


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """A tensor's bytes as a flat uint8 view (no copy for a contiguous CPU tensor: a checkpoint of GBs is hashed
    without doubling its memory)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        t = t.view(torch.uint8)
    return t.numpy().reshape(-1).view("uint8")


def tensors_sha256(obj: Any) -> str:
    """sha256 over every tensor (and numpy array) nested in `obj`: its path, dtype, shape and bytes, in a fixed order
    (dict keys sorted). The key `tensors_sha256` itself is skipped, so a payload can carry its own digest."""
    import numpy as np
    import torch  # here, not at the top: the workflow imports this module, and a Slurm job should not pay for torch

    digest = hashlib.sha256()

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"{path}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(tensor_bytes(value))
        elif isinstance(value, np.ndarray):
            digest.update(f"{path}|{value.dtype}|{value.shape}|".encode())
            digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                if key != _DIGEST_KEY:
                    walk(value[key], f"{path}/{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(obj, "")
    return digest.hexdigest()


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with its `tensors_sha256` set (call just before saving)."""
    return {**payload, _DIGEST_KEY: tensors_sha256(payload)}


def verify_sealed(payload: Mapping[str, Any], path: str | os.PathLike, what: str = "file",
                  error: type[Exception] = ProvenanceError) -> None:
    """Raise `error` when a loaded payload's tensors do not hash to the digest it was saved with (or it has none)."""
    recorded = payload.get(_DIGEST_KEY)
    if recorded is None:
        raise error(f"{what} {path} carries no tensors_sha256 (written by an older rfpp or another tool), "
                              "so its weights cannot be verified; re-create it with this rfpp")
    got = tensors_sha256(payload)
    if got != recorded:
        raise error(f"{what} {path} is corrupted: its tensors hash to {got[:12]}…, not the {recorded[:12]}… "
                              "it was saved with; delete it and re-create or re-download it")


# ------------------------------------------------------------------------------------------------ locks


@contextlib.contextmanager
def output_lock(lock_file: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive, non-blocking flock on `lock_file` (created, with this pid in it) while the block runs.

    LockedError at once when another live process holds it; the kernel releases it when the holder dies.
    """
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"{what} is being written by another process (pid {holder}, lock {path}); wait for it "
                              f"to finish or stop it (kill {holder}) and run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
