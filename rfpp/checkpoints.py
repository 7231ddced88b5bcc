"""rfpp's model file: an EDM-compatible network plus what is needed to rebuild it, loaded safely.

A model file is a `torch.save`d dict (loaded with `weights_only=True`, so nothing in it executes):
    {"format": "rfpp.model", "version": 1, "arch": "SongUNet" | "DhariwalUNet",
     "net_kwargs": EDM's constructor arguments, "sigma_data": 0.5, "state_dict": the network's weights,
     "meta": free-form provenance (source, sha256 of the source, training steps, its stage's fingerprint, …),
     "tensors_sha256": the digest of every tensor in the file (rfpp.provenance), checked on every load}
The network is always used as an EDM denoiser and, for rectified flows, in velocity form.
Writes are atomic (temporary name in the same folder, then rename).
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfpp.atomic import atomic_write
from rfpp.nets import ARCHITECTURES, EDMDenoiser, EDMVelocity, build_network
from rfpp.nets.layers import uninitialised
from rfpp.provenance import seal, verify_sealed

FORMAT = "rfpp.model"
VERSION = 1


class CheckpointError(ValueError):
    """A model file that is missing, truncated, of another format or of another architecture."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def safe_torch_load(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """torch.load(weights_only=True) with messages that name the file and the remedy; `mmap`: the tensors stay on
    disk until touched (reading a checkpoint's small fields without reading its GBs of weights)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist; check the path (or run the stage that makes it)")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{what} {path} is truncated or not a PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); delete it and re-create or re-download it") from err


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def net_spec(net: nn.Module) -> tuple[str, dict[str, Any]]:
    """(architecture name, constructor kwargs) of an rfpp network."""
    arch = type(net).__name__
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"cannot save a {arch}: only {sorted(ARCHITECTURES)} networks are supported")
    return arch, dict(net.config)


def save_model(path: str | Path, net: nn.Module, sigma_data: float = 0.5, meta: dict | None = None) -> Path:
    """Write an rfpp model file for `net` (its weights as they are now, in float32)."""
    arch, kwargs = net_spec(net)
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "arch": arch, "net_kwargs": kwargs,
               "sigma_data": float(sigma_data), "state_dict": state, "meta": dict(meta or {})}
    return atomic_torch_save(seal(payload), path)


_MAX_LISTED = 8


def listing(keys: list[str]) -> str:
    more = f" … and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_state_strict(net: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                      error: type[Exception] = CheckpointError, assign: bool = False) -> None:
    """net.load_state_dict(state, strict=True, assign=assign), or `error` naming the missing, unexpected and
    mis-shaped keys (a checkpoint of another architecture or configuration) and what to do."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs network): {listing(shapes)}")
        raise error(f"the weights in {source} do not fit a {type(net).__name__} built from the given configuration: "
                    + "; ".join(parts) + ". The checkpoint is probably of another architecture or configuration: "
                    "use the one it was made with (model_channels, channel_mult, num_blocks, attn_resolutions, "
                    "label_dim, embedding_type, encoder_type, …).")
    net.load_state_dict(state, strict=True, assign=assign)


def network_with_state(arch: str, net_kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str,
                       error: type[Exception] = CheckpointError) -> nn.Module:
    """The network `arch(**net_kwargs)` holding `state` (checked as `load_state_strict` does; the state's tensors
    are taken, cast to the network's dtypes, not copied): built uninitialised, so no random initialisation is drawn
    only to be overwritten (2.7 s of CPU for ImageNet-64's ADM) and the caller's global RNG is untouched."""
    with uninitialised():
        net = build_network(arch, **net_kwargs)
    expected = net.state_dict()
    state = {k: v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v
             for k, v in state.items()}
    load_state_strict(net, state, source, error, assign=True)
    return net


def load_model(path: str | Path, expect_arch: str | None = None,
               expect_kwargs: dict[str, Any] | None = None) -> tuple[EDMVelocity, dict[str, Any]]:
    """Read an rfpp model file -> (EDMVelocity in eval mode on the CPU, the file's dict without weights).

    `expect_arch`/`expect_kwargs` guard against a checkpoint of another architecture.
    """
    payload = safe_torch_load(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfpp model file (no 'format: {FORMAT}' record); "
                              "EDM snapshots are read with rfpp.teachers.load_edm_snapshot")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is an rfpp model file of version {payload.get('version')}; "
                              f"this rfpp reads version {VERSION}")
    verify_sealed(payload, path, "model file", error=CheckpointError)
    arch, kwargs = payload["arch"], dict(payload["net_kwargs"])
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(f"{path} holds a {arch}, but a {expect_arch} was expected")
    if expect_kwargs:
        diff = {k: (kwargs.get(k), v) for k, v in expect_kwargs.items() if kwargs.get(k) != v}
        if diff:
            key, (got, want) = next(iter(diff.items()))
            raise CheckpointError(f"{path} holds a network with {key}={got!r}, but {want!r} was expected")
    net = network_with_state(arch, kwargs, payload["state_dict"], str(path))
    velocity = EDMVelocity(EDMDenoiser(net, sigma_data=payload.get("sigma_data", 0.5))).eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return velocity, info


def model_digest(path: str | Path) -> str:
    """The verified `tensors_sha256` of an rfpp model file: what a stage that reads the model records as its input."""
    payload = safe_torch_load(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfpp model file (no 'format: {FORMAT}' record)")
    verify_sealed(payload, path, "model file", error=CheckpointError)
    return str(payload["tensors_sha256"])
