"""A checkpoint of any supported format as an rfpp model file: what `rfpp sample/invert/translate --checkpoint`
use, so that a released model samples directly (`--checkpoint cifar10-configF.pth --net-config
configs_unet/cifar10_ve_aug.json`).

An rfpp model file is used as it is; any other file is imported once (rfpp.interop.import_model) into
`<cache_dir>/<key>/<source stem>.pt`, key = the first 16 hex digits of sha256(source sha256, configuration), and
reused while it verifies. The imported file's meta names the source and its sha256, so the samples made from it
are traceable to the released file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rfpp.checkpoints import FORMAT, CheckpointError, file_sha256, load_model, safe_torch_load
from rfpp.interop.reference_models import NetConfigError, import_model, read_net_config
from rfpp.provenance import canonical


def is_rfpp_model(path: str | os.PathLike) -> bool:
    """Whether `path` is an rfpp model file (read memory-mapped: its weights are not read)."""
    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return False
    payload = safe_torch_load(path, "checkpoint", mmap=True)
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def as_model_file(source: str | os.PathLike, net_config: str | os.PathLike | None, cache_dir: str | os.PathLike
                  ) -> Path:
    """`source` itself when it is an rfpp model file, else its import (made once) under `cache_dir`."""
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} does not exist; check the path (or run the stage that makes it)")
    if is_rfpp_model(source):
        if net_config is not None:
            raise NetConfigError(f"{source} is an rfpp model file, which carries its network configuration; "
                                 "leave --net-config out")
        return source
    config = read_net_config(net_config) if net_config is not None else None
    described = None if config is None else {"arch": config.arch, "net": config.net_kwargs,
                                             "use_fp16": config.use_fp16}
    key = hashlib.sha256(canonical({"source": file_sha256(source), "config": described}).encode()).hexdigest()[:16]
    target = Path(cache_dir) / key / f"{source.stem}.pt"
    if target.exists():
        try:
            load_model(target)
            return target
        except CheckpointError:
            target.unlink()  # a damaged import: made again
    return import_model(source, target, config)
