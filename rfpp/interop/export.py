"""Export an rfpp model file to the paper's format or to safetensors.

- `reference`: `torch.save` of the state dict of the paper's `EDMPrecondVel(model)` (every key `model.<key>`,
  float32) plus the configuration JSON its `generate.py --config` reads (unet_type, EDM's constructor arguments,
  num_params). `generate.py --ckpt FILE --config JSON` then samples the same velocity.
- `safetensors`: the same tensors in a safetensors file; the metadata (strings) holds `format`
  ("rfpp.safetensors"), `arch`, `net_config` (the paper's JSON), `sigma_data`, `source_tensors_sha256` and
  `meta` (the model file's meta as JSON). `rfpp import model FILE.safetensors` reads it back without --config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rfpp.atomic import atomic_write, write_text
from rfpp.checkpoints import atomic_torch_save, load_model
from rfpp.interop.reference_models import ReferenceFormatError, reference_config_dict

FORMATS = ("reference", "safetensors")
SAFETENSORS_FORMAT = "rfpp.safetensors"


def wrapper_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights under the paper's wrapper names (`model.<key>`), float32, contiguous, on the CPU."""
    return {f"model.{k}": (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
            for k, v in net.state_dict().items()}


def export_model(model: str | os.PathLike, out: str | os.PathLike, fmt: str = "reference",
                 config_out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write `model` (an rfpp model file, verified on load) as `fmt`; returns {'weights', 'config'} paths (the
    configuration JSON for `reference` only: `config_out`, default `<out without suffix>.json`)."""
    if fmt not in FORMATS:
        raise ReferenceFormatError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    velocity, info = load_model(model)
    net = velocity.net
    meta: dict[str, Any] = dict(info.get("meta") or {})
    num_params = sum(p.numel() for p in net.parameters())
    config = reference_config_dict(info["arch"], info["net_kwargs"], num_params, bool(meta.get("use_fp16")))
    state = wrapper_state_dict(net)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "reference":
        target = Path(config_out) if config_out else out.with_suffix(".json")
        if target.resolve() == out.resolve():
            raise ReferenceFormatError(f"the configuration JSON would overwrite the weights {out}; pass --config-out")
        atomic_torch_save(state, out)
        write_text(target, json.dumps(config, indent=4) + "\n")
        return {"weights": out, "config": target}
    from safetensors.torch import save

    metadata = {"format": SAFETENSORS_FORMAT, "arch": info["arch"], "net_config": json.dumps(config),
                "sigma_data": repr(float(info.get("sigma_data", 0.5))),
                "source_tensors_sha256": str(info["tensors_sha256"]),
                "meta": json.dumps(meta, sort_keys=True, default=str)}
    blob = save(state, metadata=metadata)
    atomic_write(out, lambda handle: handle.write(blob))
    return {"weights": out}
