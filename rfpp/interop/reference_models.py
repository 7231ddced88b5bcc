"""The paper's model formats: its configuration JSON, its checkpoints and training states, EDM pickles.

Formats (what the paper's code writes; docs/interop.md):
- configuration JSON (`configs_unet/*.json`, `config_flow_model.json`): EDM's constructor arguments of the
  network plus `unet_type` (`songunet` → SongUNet, `adm` → DhariwalUNet), `num_params` (millions, informative
  only) and, for ImageNet, `use_fp16`; `config_flow_model.json` has no `unet_type` but SongUNet's `aux_dim`/`aug`.
- a 2-RF++ checkpoint (`flow_model_<it>[_ema].pth`, the released models) or a converted teacher
  (`edm_*.pth`): `torch.save` of the state dict of the wrapper (`EDMPrecondVel(model)` / `EDMPrecond(model)`),
  every key `model.<the network's key>`; both wrappers have no tensors of their own, σ_data = 0.5.
- a training state (`training_state_<it>.pth`): {'model_state_dict': that state dict, 'optimizer_state_dict',
  'iter'}; its model weights are the raw (not EMA) ones.
- an EDM snapshot (`edm-*.pkl`): read through rfpp.teachers' safe loader (EDMPrecond only).
- rfpp's safetensors export: the wrapper's state dict, the configuration in the metadata (rfpp.interop.export).
The velocity is EDMPrecondVel's: x = x_t/(1−t), σ = t/(1−t), EDM's preconditioning, v = (x_t − D)/t (t = 1 noise),
which is rfpp.nets.EDMVelocity.
"""

from __future__ import annotations

import inspect
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfpp.checkpoints import FORMAT as RFPP_MODEL_FORMAT
from rfpp.checkpoints import CheckpointError, file_sha256, listing, load_state_strict, safe_torch_load, save_model
from rfpp.nets import ARCHITECTURES, build_network

UNET_TYPES = {"songunet": "SongUNet", "adm": "DhariwalUNet"}
ARCH_UNET_TYPE = {arch: name for name, arch in UNET_TYPES.items()}
# Keys of the paper's JSON that are not constructor arguments of EDM's networks, with the value rfpp supports
# (None: any value, ignored).
_EXTRA_KEYS: dict[str, Any] = {"unet_type": None, "num_params": None, "use_fp16": None, "aux_dim": 0, "aug": False,
                               "aug_dim": None}
SIGMA_DATA = 0.5  # EDMPrecondVel's and EDMPrecond's default, which the paper's code never changes


class ReferenceFormatError(CheckpointError):
    """A file of the paper's formats that cannot be used: wrong content, keys or shapes that do not fit."""


class NetConfigError(ReferenceFormatError):
    """A configuration JSON that does not describe an EDM SongUNet/DhariwalUNet rfpp can build (bad usage)."""


@dataclass(frozen=True)
class NetConfig:
    """A network configuration: rfpp architecture name and EDM's constructor arguments; `use_fp16` as recorded."""

    arch: str
    net_kwargs: dict[str, Any]
    use_fp16: bool = False
    source: str = ""

    def build(self) -> nn.Module:
        try:
            return build_network(self.arch, **self.net_kwargs)
        except (TypeError, ValueError) as err:
            raise NetConfigError(f"{self.source or 'the configuration'} does not build an EDM {self.arch}: {err}"
                                 ) from err


def _constructor_args(arch: str) -> list[str]:
    return [p for p in inspect.signature(ARCHITECTURES[arch].__init__).parameters if p != "self"]


def _with_defaults(arch: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """EDM's constructor arguments with the defaults filled in and sequences as lists (as `net.config` holds them)."""
    params = inspect.signature(ARCHITECTURES[arch].__init__).parameters
    full = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    full.update(kwargs)
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in full.items()}


def _infer_unet_type(data: Mapping[str, Any]) -> str:
    """`config_flow_model.json` carries no unet_type: a SongUNet-only argument names SongUNet, else ADM."""
    song_only = set(_constructor_args("SongUNet")) - set(_constructor_args("DhariwalUNet"))
    return "songunet" if song_only & set(data) or "aux_dim" in data else "adm"


def net_config_from_dict(data: Mapping[str, Any], source: str = "configuration") -> NetConfig:
    """A NetConfig from the paper's configuration dict (see the module docstring); NetConfigError when it is of
    another architecture or holds arguments rfpp's networks do not take."""
    if not isinstance(data, Mapping):
        raise NetConfigError(f"{source} is not a JSON object of network arguments")
    unet_type = data.get("unet_type") or _infer_unet_type(data)
    if unet_type not in UNET_TYPES:
        raise NetConfigError(f"{source} describes a network of unet_type {unet_type!r}; rfpp reads the paper's "
                             f"{' and '.join(sorted(UNET_TYPES))} (EDM's SongUNet and DhariwalUNet) configurations")
    arch = UNET_TYPES[unet_type]
    for key, supported in _EXTRA_KEYS.items():
        if supported is not None and key in data and data[key] != supported:
            raise NetConfigError(f"{source} sets {key}={data[key]!r}: the paper's {key} option (extra inputs of "
                                 f"its SongUNet) is not supported; rfpp needs {key}={supported!r}")
    allowed = _constructor_args(arch)
    foreign = [k for k in data if k not in allowed and k not in _EXTRA_KEYS]
    if foreign:
        raise NetConfigError(f"{source} is not a configuration of EDM's {arch} (unet_type {unet_type!r}): "
                             f"{listing(foreign)} {'is not one of its' if len(foreign) == 1 else 'are not its'} "
                             "constructor arguments; pass the JSON the checkpoint was trained with "
                             "(configs_unet/*.json)")
    kwargs = {k: v for k, v in data.items() if k in allowed}
    missing = [k for k in ("img_resolution", "in_channels", "out_channels") if k not in kwargs]
    if missing:
        raise NetConfigError(f"{source} lacks the network argument(s) {', '.join(missing)}")
    return NetConfig(arch, _with_defaults(arch, kwargs), bool(data.get("use_fp16", False)), source)


def read_net_config(path: str | os.PathLike) -> NetConfig:
    """The paper's configuration JSON (`configs_unet/cifar10_ve_aug.json`, …) as a NetConfig."""
    path = Path(path)
    if not path.is_file():
        raise NetConfigError(f"network configuration {path} does not exist; pass the paper's JSON "
                             "(configs_unet/*.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NetConfigError(f"network configuration {path} is not valid JSON ({err})") from err
    return net_config_from_dict(data, f"network configuration {path}")


def reference_config_dict(arch: str, net_kwargs: Mapping[str, Any], num_params: int | None = None,
                          use_fp16: bool = False) -> dict[str, Any]:
    """The paper's configuration JSON for a network: unet_type, EDM's constructor arguments, num_params
    (millions) and, when set, use_fp16."""
    if arch not in ARCH_UNET_TYPE:
        raise NetConfigError(f"cannot describe a {arch} in the paper's format (only {sorted(ARCH_UNET_TYPE)})")
    out: dict[str, Any] = {"unet_type": ARCH_UNET_TYPE[arch], **json.loads(json.dumps(dict(net_kwargs)))}
    if num_params is not None:
        out["num_params"] = num_params / 1e6
    if use_fp16:
        out["use_fp16"] = True
    return out


# ------------------------------------------------------------------------------------------------- weights


@dataclass
class ImportedWeights:
    """A network's weights read from a foreign file: the network's own key names (no `model.` prefix)."""

    kind: str  # reference-state-dict | training-state | edm-pickle | safetensors
    state_dict: dict[str, torch.Tensor]
    config: NetConfig | None
    sigma_data: float = SIGMA_DATA
    meta: dict[str, Any] = field(default_factory=dict)


def _strip_wrapper(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The network's state dict from the wrapper's (`model.…`, also under DDP's `module.` or torch.compile's
    `_orig_mod.`); ReferenceFormatError for anything but a mapping of names to tensors."""
    if not isinstance(state, Mapping) or not state:
        raise ReferenceFormatError(f"{source} holds no state dict (a mapping of names to tensors)")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ReferenceFormatError(f"{source} is not a state dict: {listing(bad)} {'is' if len(bad) == 1 else 'are'} "
                                   "not tensors")
    keys = list(state)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in keys):
            keys = [k[len(prefix):] for k in keys]
    if not all(k.startswith("model.") for k in keys):
        outside = [k for k in keys if not k.startswith("model.")]
        raise ReferenceFormatError(f"{source} is not the state dict of the paper's EDMPrecondVel/EDMPrecond wrapper: "
                                   f"key(s) {listing(outside)} do not start with 'model.'")
    return OrderedDict((k[len("model."):], v) for k, v in zip(keys, state.values(), strict=True))


def _read_torch(path: Path) -> ImportedWeights:
    payload = safe_torch_load(path, "checkpoint")
    if isinstance(payload, Mapping) and payload.get("format") == RFPP_MODEL_FORMAT:
        raise ReferenceFormatError(f"{path} is already an rfpp model file; use it as it is")
    if isinstance(payload, Mapping) and "model_state_dict" in payload:
        meta = {"iter": int(payload["iter"])} if isinstance(payload.get("iter"), int) else {}
        return ImportedWeights("training-state", _strip_wrapper(payload["model_state_dict"], f"training state {path}"),
                               None, meta=meta)
    return ImportedWeights("reference-state-dict", _strip_wrapper(payload, f"checkpoint {path}"), None)


def _read_safetensors(path: Path) -> ImportedWeights:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ReferenceFormatError(f"{path} is truncated or not a safetensors file ({err})") from err
    config = None
    if "net_config" in metadata:
        config = net_config_from_dict(json.loads(metadata["net_config"]), f"the metadata of {path}")
    sigma = float(metadata.get("sigma_data", SIGMA_DATA))
    return ImportedWeights("safetensors", _strip_wrapper(state, f"safetensors file {path}"), config, sigma)


def _read_edm_pickle(path: Path) -> ImportedWeights:
    from rfpp.teachers import load_edm_snapshot

    denoiser = load_edm_snapshot(path, dest_dir=path.parent, progress=False)
    info = denoiser.snapshot_info
    if info["precond"] != "EDMPrecond":
        raise ReferenceFormatError(f"{path} is an EDM {info['precond']} network; rfpp model files hold EDMPrecond "
                                   "networks (EDM's edm-*.pkl snapshots), whose velocity is the paper's")
    config = NetConfig(info["network"]["model_type"], dict(denoiser.net.config), bool(info.get("use_fp16")),
                       f"EDM snapshot {path}")
    state = {k: v.detach().clone() for k, v in denoiser.net.state_dict().items()}
    return ImportedWeights("edm-pickle", state, config, float(denoiser.sigma_data))


def read_weights(path: str | os.PathLike) -> ImportedWeights:
    """The weights of a released checkpoint, teacher .pth, training state, safetensors export or EDM .pkl."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceFormatError(f"{path} does not exist or is not a file; pass a checkpoint (.pth, .pkl, "
                                   ".safetensors)")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        return _read_torch(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if head[:1] == b"\x80":  # a pickle (EDM's snapshots)
        return _read_edm_pickle(path)
    raise ReferenceFormatError(f"{path} is neither a torch.save checkpoint, a safetensors file nor an EDM pickle")


def _check_same(given: NetConfig, carried: NetConfig, source: str) -> None:
    if given.arch != carried.arch:
        raise NetConfigError(f"{given.source} describes a {given.arch}, but {source} holds a {carried.arch}")
    diff = [k for k in carried.net_kwargs if k != "dropout" and given.net_kwargs.get(k) != carried.net_kwargs[k]]
    if diff:
        k = diff[0]
        raise NetConfigError(f"{given.source} has {k}={given.net_kwargs.get(k)!r}, but {source} was made with "
                             f"{k}={carried.net_kwargs[k]!r}; leave the configuration out (the file carries it)")


def load_network(source: str | os.PathLike, config: NetConfig | str | os.PathLike | None = None
                 ) -> tuple[nn.Module, ImportedWeights, NetConfig]:
    """The network of a foreign file with its weights loaded strictly → (network, weights, configuration).

    `config`: the paper's JSON (path or NetConfig); needed for .pth files, checked against the file's own for
    EDM pickles and safetensors exports. ReferenceFormatError naming the first keys (or shapes) that differ.
    """
    weights = read_weights(source)
    given = read_net_config(config) if config is not None and not isinstance(config, NetConfig) else config
    if given is not None and weights.config is not None:
        _check_same(given, weights.config, str(source))
    net_config = weights.config or given
    if net_config is None:
        raise NetConfigError(f"{source} ({weights.kind}) carries no network configuration: pass the paper's JSON "
                             "it was trained with (--config / --net-config configs_unet/<data>.json)")
    net = net_config.build()
    load_state_strict(net, weights.state_dict, str(source), error=ReferenceFormatError)
    return net, weights, net_config


def import_model(source: str | os.PathLike, out: str | os.PathLike,
                 config: NetConfig | str | os.PathLike | None = None) -> Path:
    """Write an rfpp model file (rfpp.checkpoints) from a foreign checkpoint; its meta records the source file,
    its sha256, its kind, the configuration and, for a training state, the iteration (`step`)."""
    net, weights, net_config = load_network(source, config)
    meta: dict[str, Any] = {"source": str(source), "sha256": file_sha256(source), "imported_from": weights.kind,
                            "use_fp16": net_config.use_fp16, "net_config_source": net_config.source}
    if "iter" in weights.meta:
        meta["step"] = weights.meta["iter"]
        meta["weights"] = "raw"
    return save_model(out, net, sigma_data=weights.sigma_data, meta=meta)
