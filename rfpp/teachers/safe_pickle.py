"""A restricted unpickler for EDM network snapshots that never executes code from the file.

An EDM snapshot (``network-snapshot-*.pkl``, ``edm-*.pkl``) is ``pickle.dump(dict(ema=..., loss_fn=...,
augment_pipe=..., dataset_kwargs=...))``. Every object of a class decorated with EDM's
``torch_utils.persistence.persistent_class`` reduces to ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with ``meta = dict(type='class', version=6, module_src=<source of the defining module>, class_name=<name>,
state=<the object's __dict__>)``; EDM's loader ``exec``s ``module_src``. Here that global is replaced by a
function that returns a :class:`PersistentRecord` holding the class name and the state, and ``module_src`` is kept
as text only. Tensors come as ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over storages
serialised as ``torch.storage._load_from_bytes(<legacy torch.save bytes>)``, which are read back with
``torch.load(weights_only=True)``. Non-persistent containers (``torch.nn.ModuleDict`` …) become
:class:`ModuleRecord`. Any other global raises :class:`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = ["ModuleRecord", "PersistentRecord", "UnsafePickleError", "safe_load", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that an EDM snapshot never needs; nothing from it was called."""


class PersistentRecord:
    """What EDM's ``_reconstruct_persistent_obj`` would have rebuilt: a class name and its state, inert."""

    def __init__(self, class_name: str, state: dict, version: Any = None, module_src: str = ""):
        self.class_name = class_name
        self.state = state
        self.version = version
        self.module_src = module_src  # kept as text, never executed

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r}, {len(self.state)} state entries)"


class ModuleRecord:
    """A non-persistent torch.nn container (ModuleDict, ModuleList, Sequential) as an inert record."""

    class_name = "Module"

    def __init__(self) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0] or {}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"unexpected state of type {type(state).__name__} for {self.class_name}")
        self.state = state

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_name!r})"


def _container(name: str) -> type[ModuleRecord]:
    return type(name + "Record", (ModuleRecord,), {"class_name": name})


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict that tolerates an (empty) instance state."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise UnsafePickleError(f"persistent object metadata is a {type(meta).__name__}, not a dict")
    if meta.get("type") != "class":
        raise UnsafePickleError(f"unsupported persistent object type {meta.get('type')!r} (only 'class')")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsafePickleError("persistent object metadata lacks a class_name string or a state dict")
    src = meta.get("module_src")
    return PersistentRecord(class_name, dict(state), meta.get("version"), src if isinstance(src, str) else "")


def _load_from_bytes(data: Any) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"torch.storage._load_from_bytes got {type(data).__name__}, not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
        try:
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            match = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            what = f"the global '{match.group(1)}'" if match else "objects other than a storage"
            raise UnsafePickleError(f"refusing to load: a serialised tensor storage in the pickle references {what} "
                                    "(refused by torch.load(weights_only=True)). Nothing from the file was "
                                    "executed. The file may be malicious or not an EDM snapshot.") from None
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"a serialised storage held a {type(storage).__name__}, not a typed storage")
    return storage


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"a tensor was to be rebuilt from a {type(storage).__name__}, not a storage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))
    tensor.requires_grad = bool(requires_grad)
    return tensor  # backward hooks and metadata are dropped on purpose


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any, state: Any = None) -> torch.nn.Parameter:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"a parameter was to be rebuilt from a {type(data).__name__}, not a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy array subclass {subtype!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype: Any, *data: Any) -> Any:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"numpy scalar with dtype {dtype!r}")
    return _np_scalar(dtype, *data)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol < 3 writes bytes as ``_codecs.encode(<latin-1 text>, 'latin1')``; only that form is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 object creation (``copyreg._reconstructor``), only for the inert record classes."""
    if isinstance(cls, type) and issubclass(cls, (ModuleRecord, _EasyDict)) and base in (object, dict):
        obj = cls.__new__(cls)
        if base is dict and state is not None:
            obj.update(state)
        return obj
    raise UnsafePickleError(f"copyreg._reconstructor for {cls!r} is not allowed")


_NP_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("builtins", "dict"): dict,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(m, "scalar"): _numpy_scalar for m in _NP_CORE},
    **{(m, "_reconstruct"): _numpy_reconstruct for m in _NP_CORE},
    **{("torch.nn.modules.container", n): _container(n) for n in ("ModuleDict", "ModuleList", "Sequential")},
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        key = (_PY2_MODULES.get(module, module), name)
        if key in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[key]
        raise UnsafePickleError(
            f"refusing to load: the pickle references the global '{module}.{name}', which an EDM network "
            "snapshot never needs. Nothing from the file was executed. The file may be malicious or not an EDM "
            "snapshot; load only snapshots from sources you trust (EDM's own URLs, see rfpp.teachers.TEACHERS).")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the pickle uses persistent ids (a torch.save file?), which EDM snapshots do not")


def safe_loads(data: bytes) -> Any:
    """Unpickle EDM snapshot bytes with :class:`SafeUnpickler`."""
    return SafeUnpickler(io.BytesIO(data)).load()


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle an EDM snapshot file with :class:`SafeUnpickler`."""
    with open(Path(path), "rb") as f:
        return SafeUnpickler(f).load()
