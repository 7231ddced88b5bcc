"""A tiny training world for the train tests: a random 8×8 teacher, a small pair set and a profile YAML; and
`flip_tensor_bytes`, which corrupts the tensor data of a torch.save file in place."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from rfpp.checkpoints import load_model, save_model
from rfpp.config import Config, load_config
from rfpp.nets import SongUNet
from rfpp.pairs import PairSpec, finalize, generate_shard, teacher_function
from rfpp.paths import ProfilePaths

SHAPE = (1, 8, 8)
NET = dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=0, model_channels=16, channel_mult=[1, 2],
           num_blocks=1, attn_resolutions=[4], dropout=0.0)
TRAIN = dict(steps=6, batch=8, lr=1e-3, warmup=2, ema=0.9, ema_start=1, ckpt_every=3, keep_last=2, num_workers=0,
             log_every=2, eval_every=0, eval_batch=8, straightness_nfe=2, dropout=0.1, perceptual="lpips-vgg16",
             arms={"baseline": {"timesteps": "uniform", "loss": "l2-squared", "init": "teacher"},
                   "huber": {"timesteps": "u_shaped", "a": 4.0, "loss": "pseudo-huber", "init": "teacher"}})


# One resolution level with attention: what the compiled-training test compiles (inductor builds ~45 C++ kernels for
# it on a cold cache, against ~70 for NET: about 40 s less of the CPU).
ONE_LEVEL_NET = {**NET, "channel_mult": [1], "attn_resolutions": [8]}


def tiny_teacher(seed: int = 0, net: dict[str, Any] | None = None) -> SongUNet:
    torch.manual_seed(seed)
    net = SongUNet(**(net or NET))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def make_world(root: Path, train: dict[str, Any] | None = None, count: int = 48, name: str = "tiny",
               net: dict[str, Any] | None = None) -> Path:
    """results/<name>/{teacher/teacher.pt, pairs/…} under `root` and root/<name>.yaml (teacher `net`, default NET);
    returns the YAML path.

    Run the stage with the working directory `root` (results/ is relative to it) or pass ProfilePaths."""
    paths = ProfilePaths.of(name, root / "results")
    save_model(paths.teacher, tiny_teacher(net=net), meta={"source": "test"})
    make_pairs(paths, count)
    profile = {"profile": name, "seed": 0, "device": "cpu",
               "data": {"dataset": "digits", "resolution": 8},
               "teacher": {"source": "train", "arch": "SongUNet", "net": net or NET},
               "pairs": {"count": count, "num_shards": 1, "seed": 3},
               "train": {**TRAIN, **(train or {})},
               "sample": {"nfe": [1, 2], "solver": "euler", "update": "new"}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def make_pairs(paths: ProfilePaths, count: int = 48, seed: int = 3) -> None:
    """(Re)make the pair set of `paths` from its teacher file, noise drawn from `seed`."""
    shutil.rmtree(paths.pairs_dir, ignore_errors=True)
    velocity, _ = load_model(paths.teacher)
    spec = PairSpec(count=count, num_shards=1, chunk=16, seed=seed, shape=SHAPE)
    fn = teacher_function(velocity.denoiser.eval(), "edm_heun", steps=2)
    generate_shard(paths.pairs_dir, spec, 0, fn, progress=False)
    finalize(paths.pairs_dir, spec, {"teacher": {"name": "tiny"}})


def flip_tensor_bytes(path: Path, count: int = 64) -> str:
    """Invert `count` bytes in the middle of the largest tensor storage of a torch.save file (a zip archive whose
    storages are stored uncompressed under <name>/data/<k>); returns the storage's name."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size >= count
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)  # the local file header: its name and extra field lengths are at bytes 26..29
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - count // 2
        handle.seek(start)
        data = handle.read(count)
        handle.seek(start)
        handle.write(bytes(b ^ 0xFF for b in data))
    return info.filename


def world_config(root: Path, overrides: list[str] | None = None, name: str = "tiny") -> tuple[Config, ProfilePaths]:
    return load_config(str(root / f"{name}.yaml"), overrides or []), ProfilePaths.of(name, root / "results")


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
