"""Test-only writer of network snapshots in the byte format of EDM's ``torch_utils.persistence``.

EDM's persistent classes pickle as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {'type': 'class', 'version': 6, 'module_src': <module source>, 'class_name': <name>, 'state': <the
object's __dict__>}`` and no separate state; the snapshot is ``pickle.dump(dict(ema=..., loss_fn=...,
augment_pipe=..., dataset_kwargs=...))``. This module produces the same globals and structure from rfpp's
networks: every rfpp layer (Linear, Conv2d, GroupNorm, UNetBlock, …, SongUNet, DhariwalUNet) and a stand-in
preconditioning wrapper are written as persistent objects whose state is a torch-1.12-style module ``__dict__``
(OrderedDicts, ``_init_args``/``_init_kwargs``, EDM's numpy ``skip_scale``); ``torch.nn.ModuleDict`` pickles as
usual. ``module_src`` is a made-up module whose top level would create a sentinel file if anyone executed it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PERSISTENT_LAYERS = {"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding",
                     "SongUNet", "DhariwalUNet"}
VERSION = 6


def _reconstruct_persistent_obj(meta: dict) -> Any:  # pickled by reference only, never called by tests
    raise RuntimeError("test stand-in for torch_utils.persistence._reconstruct_persistent_obj")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


def module_source(sentinel: str | Path) -> str:
    """A plausible networks module whose execution would touch `sentinel`."""
    return (
        '"""Networks (test fixture)."""\n\n'
        "import pathlib\n"
        "import torch\n"
        "from torch_utils import persistence\n\n"
        f"pathlib.Path({str(sentinel)!r}).touch()  # executing this module leaves a trace\n\n\n"
        "@persistence.persistent_class\n"
        "class EDMPrecond(torch.nn.Module):\n"
        "    def __init__(self, img_resolution, img_channels, **kwargs):\n"
        "        super().__init__()\n"
        "        self.img_resolution = img_resolution\n"
    )


class PersistentPlain:
    """A persistent object that is not a module (EDM's EDMLoss, AugmentPipe)."""

    def __init__(self, class_name: str, attrs: dict):
        self.class_name = class_name
        self.attrs = attrs


class PrecondStandIn(nn.Module):
    """Holds the network as ``model`` plus the preconditioning's attributes, pickled as `class_name`."""

    def __init__(self, class_name: str, model: nn.Module, attrs: dict, init_kwargs: dict | None):
        super().__init__()
        self.edm_class_name = class_name
        self.edm_attrs = attrs
        self.edm_init_kwargs = init_kwargs
        self.model = model


def _torch112_module_state(mod: nn.Module) -> dict:
    """The module's __dict__ as torch 1.12 had it (OrderedDict containers), minus rfpp-only attributes."""
    state = dict(vars(mod))
    for key in ("_parameters", "_buffers", "_modules"):
        state[key] = collections.OrderedDict(state[key])
    state["_non_persistent_buffers_set"] = set(state.get("_non_persistent_buffers_set", ()))
    for key in ("config", "edm_class_name", "edm_attrs", "edm_init_kwargs"):
        state.pop(key, None)
    return state


def _layer_init_kwargs(mod: nn.Module) -> dict:
    if hasattr(mod, "config"):
        return dict(mod.config)
    return {k: v for k, v in vars(mod).items()
            if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float))}


class EDMPickler(pickle.Pickler):
    def __init__(self, file: Any, protocol: int, module_src: str):
        super().__init__(file, protocol=protocol)
        self.module_src = module_src

    def _persistent(self, class_name: str, state: dict) -> tuple:
        meta = dict(type="class", version=VERSION, module_src=self.module_src, class_name=class_name, state=state)
        return _reconstruct_persistent_obj, (meta,), None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, PrecondStandIn):
            state = _torch112_module_state(obj)
            kwargs = obj.edm_init_kwargs  # None: EDM's `_record_init_args = False`
            state.update(obj.edm_attrs, _init_args=None if kwargs is None else (),
                         _init_kwargs=None if kwargs is None else dict(kwargs))
            return self._persistent(obj.edm_class_name, state)
        if isinstance(obj, nn.Module) and type(obj).__name__ in PERSISTENT_LAYERS:
            state = _torch112_module_state(obj)
            init_kwargs = _layer_init_kwargs(obj)
            if type(obj).__name__ == "UNetBlock":  # EDM computes these with numpy
                state["skip_scale"] = np.float64(state["skip_scale"])
                init_kwargs["init_attn"] = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
            state.update(_init_args=(), _init_kwargs=init_kwargs)
            return self._persistent(type(obj).__name__, state)
        if isinstance(obj, PersistentPlain):
            return self._persistent(obj.class_name, dict(obj.attrs, _init_args=(), _init_kwargs=dict(obj.attrs)))
        return NotImplemented


@contextlib.contextmanager
def fake_torch_utils() -> Iterator[None]:
    """Make ``torch_utils.persistence._reconstruct_persistent_obj`` importable while pickling."""
    added = []
    if "torch_utils" not in sys.modules:
        sys.modules["torch_utils"] = types.ModuleType("torch_utils")
        added.append("torch_utils")
    if "torch_utils.persistence" not in sys.modules:
        mod = types.ModuleType("torch_utils.persistence")
        mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
        sys.modules["torch_utils.persistence"] = mod
        sys.modules["torch_utils"].persistence = mod
        added.append("torch_utils.persistence")
    try:
        yield
    finally:
        for name in reversed(added):
            del sys.modules[name]


def precond_stand_in(net: nn.Module, precond: str = "EDMPrecond", use_fp16: bool = False,
                     **precond_kwargs: Any) -> PrecondStandIn:
    """Wrap an rfpp SongUNet/DhariwalUNet the way EDM's train.py builds `precond`(model_type=…, …)."""
    cfg = dict(net.config)
    model_kwargs = {k: v for k, v in cfg.items() if k not in ("img_resolution", "in_channels", "out_channels",
                                                              "label_dim")}
    init_kwargs = dict(img_resolution=cfg["img_resolution"], img_channels=cfg["in_channels"],
                       label_dim=cfg["label_dim"], use_fp16=use_fp16, model_type=type(net).__name__,
                       **precond_kwargs, **model_kwargs)
    attrs = dict(img_resolution=cfg["img_resolution"], img_channels=cfg["in_channels"], label_dim=cfg["label_dim"],
                 use_fp16=use_fp16)
    if precond == "EDMPrecond":
        attrs.update(sigma_min=0.0, sigma_max=math.inf, sigma_data=precond_kwargs.get("sigma_data", 0.5))
    elif precond == "VPPrecond":
        attrs.update(beta_d=precond_kwargs.get("beta_d", 19.9), beta_min=precond_kwargs.get("beta_min", 0.1),
                     M=precond_kwargs.get("M", 1000), epsilon_t=1e-5, sigma_min=0.0016, sigma_max=151.0)
    else:
        attrs.update(sigma_min=0.02, sigma_max=100.0)
    return PrecondStandIn(precond, net, attrs, init_kwargs)


def dump_snapshot(file: Any, ema: Any, sentinel: str | Path, protocol: int = 4, extra: dict | None = None) -> None:
    """EDM's snapshot dict around `ema` (a PrecondStandIn or any object), pickled into `file` as EDM does."""
    if isinstance(ema, nn.Module):
        ema = ema.eval().requires_grad_(False)
    data = dict(
        ema=ema,
        loss_fn=PersistentPlain("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)),
        augment_pipe=PersistentPlain("AugmentPipe", dict(p=0.12, xflip=1e8, yflip=1.0, scale=1.0, brightness=1.0)),
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="datasets/tiny.zip",
                            use_labels=False, xflip=False, cache=True, resolution=8, max_size=100),
    )
    data.update(extra or {})
    with fake_torch_utils():
        EDMPickler(file, protocol, module_source(sentinel)).dump(data)


def snapshot_bytes(ema: Any, sentinel: str | Path, protocol: int = 4, extra: dict | None = None) -> bytes:
    """EDM's snapshot dict around `ema`, pickled as EDM does, as bytes."""
    buf = io.BytesIO()
    dump_snapshot(buf, ema, sentinel, protocol, extra)
    return buf.getvalue()


def write_snapshot(path: str | Path, ema: Any, sentinel: str | Path, protocol: int = 4,
                   extra: dict | None = None) -> Path:
    """The snapshot written straight to `path` (no copy in memory: an ImageNet-64 network is 1.2 GB)."""
    path = Path(path)
    with path.open("wb") as f:
        dump_snapshot(f, ema, sentinel, protocol, extra)
    return path


def randomize_(net: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Overwrite every parameter and buffer with N(0, std²) draws (no zero-initialised layer hides a path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            t.copy_(torch.randn(t.shape, generator=g) * std)
    return net


# ----------------------------------------------------------------------------------------------------------------
# The networks of EDM's released snapshots

# EDM's README ("Training new models", the table of the released runs) gives each run's options on top of
# train.py's defaults (--dropout 0.13, --augment 0.12, --fp16 0); --augment > 0 sets augment_dim = 9.
EDM_RUN_OPTIONS: dict[str, dict[str, Any]] = {
    "cifar10": dict(dropout=0.13, augment=0.12, fp16=False),
    "ffhq": dict(cres=[1, 2, 2, 2], dropout=0.05, augment=0.15, fp16=False),
    "afhqv2": dict(cres=[1, 2, 2, 2], dropout=0.25, augment=0.15, fp16=False),
    "imagenet": dict(dropout=0.10, augment=0.0, fp16=True),
}


def edm_release_network(spec: Any) -> tuple[str, dict[str, Any], bool]:
    """(model_type, the network's constructor kwargs, use_fp16) of the released snapshot described by `spec`
    (an rfpp.teachers.registry.TeacherSpec), built as EDM's train.py builds it from the run's options."""
    if spec.arch == "ddpmpp":
        model_type = "SongUNet"
        kwargs: dict[str, Any] = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                                      channel_mult=[2, 2, 2])
    elif spec.arch == "ncsnpp":
        model_type = "SongUNet"
        kwargs = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
                      resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
    else:
        assert spec.arch == "adm", spec.arch
        model_type = "DhariwalUNet"
        kwargs = dict(model_channels=192, channel_mult=[1, 2, 3, 4])
    options = EDM_RUN_OPTIONS[spec.dataset]
    if "cres" in options:
        kwargs["channel_mult"] = list(options["cres"])
    if options["augment"]:
        kwargs["augment_dim"] = 9
    kwargs["dropout"] = options["dropout"]
    label_dim = {"cifar10": 10, "imagenet": 1000}[spec.dataset] if spec.conditional else 0
    net_kwargs = dict(img_resolution=spec.resolution, in_channels=3, out_channels=3, label_dim=label_dim, **kwargs)
    return model_type, net_kwargs, bool(options["fp16"])


def randomize_zero_init_(net: nn.Module, seed: int = 0, gain: float = 0.3) -> nn.Module:
    """Give the weights EDM initialises to (almost) zero (ADM's init_weight 0, DDPM++/NCSN++'s 1e-5: output and
    residual convolutions) random values of std gain/sqrt(fan_in), so the network's output depends on every block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 0
            if fan_in and float(p.abs().max()) < 1e-3 / math.sqrt(fan_in):
                p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in)))
    return net


def write_release_snapshot(path: str | Path, spec: Any, sentinel: str | Path, seed: int = 0,
                           **narrower: Any) -> tuple[Path, nn.Module]:
    """A random-weight stand-in for the released snapshot of `spec` (same architecture, resolution, channels,
    conditioning and preconditioning), in EDM's format: EDM's own initialisation drawn from `seed`, zero-initialised
    layers made random (randomize_zero_init_) → (the file, the network written). `narrower`: constructor arguments
    that differ from the release's (e.g. model_channels, for a DAG that must run in seconds)."""
    from rfpp.nets import build_network

    model_type, net_kwargs, use_fp16 = edm_release_network(spec)
    net_kwargs.update(narrower)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(model_type, **net_kwargs)
    randomize_zero_init_(net, seed)
    res, cond = spec.resolution, spec.conditional
    dataset = dict(class_name="training.dataset.ImageFolderDataset", path=f"datasets/{spec.dataset}-{res}x{res}.zip",
                   use_labels=cond, xflip=False, cache=True, resolution=res, max_size=50000)
    written = write_snapshot(path, precond_stand_in(net, spec.precond, use_fp16=use_fp16), sentinel,
                             extra=dict(dataset_kwargs=dataset))
    return written, net
