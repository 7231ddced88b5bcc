"""Load EDM teachers as rfpp networks: from EDM's pickled snapshots (safely) or from plain state dicts.

``load_edm_snapshot`` reads an EDM ``.pkl`` with :mod:`rfpp.teachers.safe_pickle` (no code from the file runs),
takes the ``ema`` network's recorded constructor arguments (``init_kwargs``) and tensors, builds the matching
``rfpp.nets.SongUNet`` / ``DhariwalUNet``, loads the weights with ``strict=True`` and wraps the network in the
preconditioning it was trained with: ``EDMPrecond`` → :class:`rfpp.nets.EDMDenoiser`; ``VPPrecond`` /
``VEPrecond`` → :class:`VPDenoiser` / :class:`VEDenoiser`. ``iDDPMPrecond`` (EDM's ADM baseline) is refused.
"""

from __future__ import annotations

import math
import os
import pickle
import urllib.parse
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfpp.checkpoints import listing, load_state_strict
from rfpp.nets import ARCHITECTURES, EDMDenoiser, build_network
from rfpp.nets.layers import uninitialised
from rfpp.teachers.denoisers import VEDenoiser, VPDenoiser
from rfpp.teachers.download import download
from rfpp.teachers.registry import TEACHERS
from rfpp.teachers.safe_pickle import ModuleRecord, PersistentRecord, UnsafePickleError, safe_load

__all__ = ["SUPPORTED_PRECONDS", "TeacherLoadError", "load_edm_snapshot", "load_state_dict_teacher"]


class TeacherLoadError(RuntimeError):
    """A teacher checkpoint could not be turned into a network (corrupt file, other architecture, …)."""


# The preconditioning classes of EDM's training/networks.py: positional parameter order and defaults.
_PRECOND_SIGNATURES: dict[str, dict[str, Any]] = {
    "EDMPrecond": dict(img_resolution=None, img_channels=None, label_dim=0, use_fp16=False, sigma_min=0.0,
                       sigma_max=math.inf, sigma_data=0.5, model_type="DhariwalUNet"),
    "VPPrecond": dict(img_resolution=None, img_channels=None, label_dim=0, use_fp16=False, beta_d=19.9,
                      beta_min=0.1, M=1000, epsilon_t=1e-5, model_type="SongUNet"),
    "VEPrecond": dict(img_resolution=None, img_channels=None, label_dim=0, use_fp16=False, sigma_min=0.02,
                      sigma_max=100.0, model_type="SongUNet"),
}
SUPPORTED_PRECONDS = tuple(_PRECOND_SIGNATURES)


# ----------------------------------------------------------------------------------------------------------------
# Weights


def _collect_tensors(record: Any, prefix: str, out: OrderedDict, where: str) -> None:
    """Flatten a record tree (module __dict__ states) into a state dict, as nn.Module.state_dict would."""
    if not isinstance(record, (PersistentRecord, ModuleRecord)):
        raise TeacherLoadError(f"{where}: expected a module at '{prefix.rstrip('.') or '<root>'}', "
                               f"found {type(record).__name__}")
    state = getattr(record, "state", None) or {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise TeacherLoadError(f"{where}: {prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, where)


# ----------------------------------------------------------------------------------------------------------------
# EDM pickles


def _precond_config(record: PersistentRecord, where: str) -> dict[str, Any]:
    """The preconditioning's constructor arguments (EDM's ``init_args``/``init_kwargs``), defaults filled in."""
    signature = _PRECOND_SIGNATURES[record.class_name]
    state = record.state
    args, kwargs = state.get("_init_args"), state.get("_init_kwargs")
    if kwargs is None and args is None:
        # Recorded arguments switched off: fall back to the attributes and the inner model's arguments.
        model = (state.get("_modules") or {}).get("model")
        model_kwargs = dict(getattr(model, "state", {}).get("_init_kwargs") or {})
        if not model_kwargs:
            raise TeacherLoadError(f"{where}: the network records no constructor arguments (init_kwargs), so "
                                   "its architecture cannot be rebuilt")
        config = {k: state[k] for k in signature if k in state}
        config["model_type"] = getattr(model, "class_name", signature["model_type"])
        config["img_channels"] = model_kwargs.pop("in_channels", state.get("img_channels"))
        model_kwargs.pop("out_channels", None)
        for key in ("img_resolution", "label_dim"):
            config[key] = model_kwargs.pop(key, config.get(key))
        return {**signature, **config, **model_kwargs}
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    names = list(signature)
    if len(args) > len(names):
        raise TeacherLoadError(f"{where}: {record.class_name} recorded {len(args)} positional arguments")
    config = dict(signature)
    config.update(zip(names, args, strict=False))
    config.update(kwargs)
    missing = [k for k, v in config.items() if v is None and k in ("img_resolution", "img_channels")]
    if missing:
        raise TeacherLoadError(f"{where}: {record.class_name} lacks the constructor argument(s) {missing}")
    return config


def _build_from_config(precond: str, config: dict[str, Any], where: str) -> tuple[nn.Module, dict, dict]:
    """The rfpp network for a precond config: (net, network kwargs, precond-only kwargs)."""
    signature = _PRECOND_SIGNATURES[precond]
    precond_kwargs = {k: config[k] for k in signature if k not in ("img_resolution", "img_channels", "label_dim")}
    model_type = precond_kwargs.pop("model_type")
    if model_type not in ARCHITECTURES:
        raise TeacherLoadError(f"{where}: the network's model_type is {model_type!r}; rfpp.nets supports "
                               f"{sorted(ARCHITECTURES)}")
    net_kwargs = dict(img_resolution=config["img_resolution"], in_channels=config["img_channels"],
                      out_channels=config["img_channels"], label_dim=config["label_dim"])
    net_kwargs.update({k: v for k, v in config.items() if k not in signature})
    try:
        with uninitialised():  # every tensor is then loaded from the snapshot (load_state_strict: no key missing)
            net = build_network(model_type, **net_kwargs)
    except TypeError as e:
        raise TeacherLoadError(f"{where}: rfpp.nets.{model_type} cannot be built with the recorded arguments "
                               f"{net_kwargs}: {e}") from e
    return net, dict(model_type=model_type, **net_kwargs), precond_kwargs


def _denoiser_from_record(ema: Any, where: str) -> EDMDenoiser:
    if not isinstance(ema, PersistentRecord):
        raise TeacherLoadError(f"{where}: the network entry is a {type(ema).__name__}, not an EDM network")
    if ema.class_name not in _PRECOND_SIGNATURES:
        raise TeacherLoadError(
            f"{where}: the network is an EDM {ema.class_name}; supported preconditionings are "
            f"{', '.join(SUPPORTED_PRECONDS)} (EDM's pretrained edm-*.pkl files are all EDMPrecond; iDDPMPrecond "
            "is only used by the baseline ADM ImageNet model and is not supported)")
    config = {k: (float(v) if isinstance(v, float) else v) for k, v in _precond_config(ema, where).items()}
    net, net_kwargs, precond_kwargs = _build_from_config(ema.class_name, config, where)

    tensors: OrderedDict = OrderedDict()
    _collect_tensors(ema, "", tensors, where)
    outside = [k for k in tensors if not k.startswith("model.")]
    if outside:
        raise TeacherLoadError(f"{where}: unexpected tensors outside the model: {listing(outside)}")
    state_dict = OrderedDict((k[len("model."):], v) for k, v in tensors.items())
    load_state_strict(net, state_dict, where, error=TeacherLoadError)

    if ema.class_name == "EDMPrecond":
        sigma_data = float(ema.state.get("sigma_data", precond_kwargs["sigma_data"]))
        denoiser: EDMDenoiser = EDMDenoiser(net, sigma_data=sigma_data)
    elif ema.class_name == "VPPrecond":
        denoiser = VPDenoiser(net, beta_d=float(precond_kwargs["beta_d"]), beta_min=float(precond_kwargs["beta_min"]),
                              M=int(precond_kwargs["M"]))
    else:
        denoiser = VEDenoiser(net)
    denoiser.snapshot_info = dict(precond=ema.class_name, network=net_kwargs,
                                  **{k: float(v) if isinstance(v, float) else v for k, v in precond_kwargs.items()})
    return denoiser.eval().requires_grad_(False)


def _resolve(path_or_url: str | os.PathLike, dest_dir: str | os.PathLike, expected_sha256: str | None,
             progress: bool) -> Path:
    """Registry name → URL; URL → downloaded file; local path → itself (each with its sha256 checked)."""
    if isinstance(path_or_url, str) and path_or_url in TEACHERS:
        spec = TEACHERS[path_or_url]
        return download(spec.url, dest_dir, filename=spec.filename, progress=progress,
                        expected_sha256=expected_sha256 or spec.sha256)
    text = os.fspath(path_or_url)
    if urllib.parse.urlparse(text).scheme in ("http", "https"):
        return download(text, dest_dir, progress=progress, expected_sha256=expected_sha256)
    if not Path(text).exists():
        raise FileNotFoundError(f"teacher snapshot {text} does not exist; pass a path, an http(s) URL or one of "
                                f"the registered names: {', '.join(TEACHERS)}")
    return download(text, dest_dir, progress=progress, expected_sha256=expected_sha256)


def load_edm_snapshot(path_or_url: str | os.PathLike, *, key: str = "ema", dest_dir: str | os.PathLike = "resources",
                      expected_sha256: str | None = None, progress: bool = True) -> EDMDenoiser:
    """The ``ema`` network of an EDM snapshot as a frozen rfpp denoiser, loaded without running code.

    The denoiser is in eval mode with ``requires_grad`` off (a teacher); a student copies its weights.

    `path_or_url`: a local ``.pkl``, an http(s) URL (downloaded into `dest_dir` once) or a name from
    ``rfpp.teachers.TEACHERS``. The file's sha256 is recorded at first use and checked after (see
    :func:`rfpp.teachers.download`). The result's ``snapshot_info`` dict records the preconditioning and the
    network's constructor arguments. Raises UnsafePickleError for a pickle that needs anything an EDM snapshot
    does not, TeacherLoadError for a corrupt file or an unsupported network.
    """
    path = _resolve(path_or_url, dest_dir, expected_sha256, progress)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        raise TeacherLoadError(f"{path} is a torch.save checkpoint, not an EDM pickle: load it with "
                               "rfpp.teachers.load_state_dict_teacher(path, arch, config)")
    try:
        data = safe_load(path)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise TeacherLoadError(f"file {path} is truncated or not an EDM snapshot ({type(e).__name__}: {e}): "
                               "delete it (and its .sha256 record) and download it again") from e
    where = f"EDM snapshot {path}"
    if isinstance(data, PersistentRecord):  # a bare pickled network
        ema = data
    elif isinstance(data, dict):
        if key not in data:
            raise TeacherLoadError(f"{where} has no {key!r} entry (entries: {sorted(map(str, data))})")
        ema = data[key]
    else:
        raise TeacherLoadError(f"{where} holds a {type(data).__name__}, not EDM's snapshot dict")
    denoiser = _denoiser_from_record(ema, where)
    denoiser.snapshot_info["source"] = str(path)
    return denoiser


# ----------------------------------------------------------------------------------------------------------------
# Plain state dicts


def _strip_common_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(state_dict)
    for prefix in ("module.", "_orig_mod.", "denoiser.", "net.", "model."):
        if keys and all(k.startswith(prefix) for k in keys):
            keys = [k[len(prefix):] for k in keys]
    return dict(zip(keys, state_dict.values(), strict=True))


def load_state_dict_teacher(path: str | os.PathLike, arch: str, config: Mapping[str, Any],
                            sigma_data: float | None = None) -> EDMDenoiser:
    """An EDMDenoiser from a plain state dict (``.pt``/``.pth``, read with ``torch.load(weights_only=True)``).

    The keys may carry EDMPrecond's ``model.`` prefix (the paper's converted checkpoints) or none; a wrapping
    ``{'state_dict'|'ema'|'model'|'net': {...}}`` is unwrapped. `arch` is ``SongUNet`` or ``DhariwalUNet``;
    `config` is either the network's constructor kwargs (``img_resolution, in_channels, out_channels, …``) or
    EDMPrecond's (``img_resolution, img_channels, label_dim, sigma_data, model kwargs …``). σ_data: the argument,
    else ``config['sigma_data']``, else 0.5. The denoiser is frozen (eval mode, ``requires_grad`` off).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist (or is not a file)")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notices of torch.load
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise TeacherLoadError(f"{path} holds objects other than tensors and plain containers, so it is not a "
                                   "plain state dict (an EDM .pkl snapshot? use rfpp.teachers.load_edm_snapshot)"
                                   ) from e
        raise TeacherLoadError(f"file {path} is truncated or not a checkpoint ({e}): re-download it") from e
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise TeacherLoadError(f"file {path} is truncated or not a checkpoint ({str(e).splitlines()[0]}): "
                               "re-download it") from e
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "ema", "model", "net"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherLoadError(f"{path} is not a state dict (a mapping of names to tensors)")
    state_dict = _strip_common_prefixes(obj)

    config = dict(config)
    if "img_channels" in config:  # EDMPrecond-style config
        model_type = config.pop("model_type", arch)
        if model_type != arch:
            raise ValueError(f"config says model_type={model_type!r} but arch={arch!r}")
        config = {**_PRECOND_SIGNATURES["EDMPrecond"], **config, "model_type": arch}
        net, _, precond_kwargs = _build_from_config("EDMPrecond", config, str(path))
        config_sigma = precond_kwargs["sigma_data"]
    else:
        config_sigma = config.pop("sigma_data", 0.5)
        for key in ("use_fp16", "sigma_min", "sigma_max", "model_type"):
            config.pop(key, None)
        try:
            with uninitialised():
                net = build_network(arch, **config)
        except TypeError as e:
            raise TeacherLoadError(f"rfpp.nets.{arch} cannot be built from config {config}: {e}") from e
    load_state_strict(net, state_dict, str(path), error=TeacherLoadError)
    denoiser = EDMDenoiser(net, sigma_data=float(sigma_data if sigma_data is not None else config_sigma))
    denoiser.snapshot_info = dict(precond="EDMPrecond", network=dict(model_type=arch, **net.config),
                                  sigma_data=denoiser.sigma_data, source=str(path))
    return denoiser.eval().requires_grad_(False)
