"""The teacher stage: results/<profile>/teacher/teacher.pt, an rfpp model file, from any source.

- `teacher.source: train`: a 1-rectified flow trained here on the profile's data (rectified_flow.py),
  with a grid of its samples saved as teacher/samples.png.
- an EDM snapshot name (rfpp.teachers.TEACHERS), URL or .pkl path: downloaded (resumable, sha256
  recorded and checked), loaded without executing anything, its `ema` network written out.
- a .pt/.pth plain state dict of EDMPrecond's `model.…` keys with `teacher.net` as its configuration.
The resolved configuration is saved beside the output as teacher/config.yaml; every teacher's preview grid,
teacher/samples.png, shows `teacher.grid` samples of `teacher.grid_nfe` Heun NFE. A teacher whose preview
samples are not finite is refused before teacher.pt is written.

Provenance: teacher.pt's `meta.fingerprint` is `teacher_fingerprint(config)` (stage "teacher", format
"rfpp.teacher/1", the resolved seed/data/teacher sections, and the sha256 of a local source file). An existing
teacher.pt is kept only when it verifies and carries the same fingerprint; otherwise it is made again, with a
line naming the first setting that differs. The stage holds teacher/.teacher.lock while it works.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rfpp.atomic import write_json, write_text
from rfpp.checkpoints import CheckpointError, file_sha256, load_model, save_model
from rfpp.config import Config
from rfpp.devices import resolve_device
from rfpp.images import save_grid
from rfpp.nets import EDMDenoiser, EDMVelocity
from rfpp.paths import ProfilePaths
from rfpp.provenance import difference, fingerprint, kept, output_lock, stage_settings
from rfpp.sampling import sample
from rfpp.teachers.edm import TeacherLoadError, load_edm_snapshot, load_state_dict_teacher
from rfpp.teachers.rectified_flow import train_rectified_flow
from rfpp.tracking import stage_run

TEACHER_FORMAT = "rfpp.teacher/1"


def _write_config(config: Config, folder: Path) -> None:
    write_text(folder / "config.yaml", config.to_yaml())


def preview_samples(velocity: EDMVelocity, count: int = 64, nfe: int = 15, seed: int = 0,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """`count` samples from a velocity model (Heun, `nfe` NFE raised to odd, plain update), on the CPU."""
    res, ch = velocity.img_resolution, velocity.img_channels
    noise = torch.randn(count, ch, res, res, generator=torch.Generator().manual_seed(seed)).to(device)
    labels = torch.arange(count, device=device) % velocity.label_dim if velocity.label_dim else None
    images = sample(velocity, noise, nfe=nfe if nfe % 2 else nfe + 1, solver="heun", update="default",
                    class_labels=labels)
    return images.cpu()


def teacher_fingerprint(config: Config) -> dict:
    """What a teacher.pt is made from: the seed/data/teacher settings and, for a local source file, its sha256
    (a URL or registry name is in the settings, with teacher.sha256 when one is pinned)."""
    source = config.teacher.source
    inputs = {"source": file_sha256(source)} if source != "train" and Path(source).is_file() else {}
    return fingerprint("teacher", TEACHER_FORMAT, stage_settings(config, "teacher"), inputs)


def teacher_difference(path: Path, expected: dict) -> str | None:
    """None when the model file at `path` verifies and carries fingerprint `expected`; else why it cannot stay."""
    try:
        _, info = load_model(path)
    except CheckpointError as err:
        return f"it cannot be used: {err}"
    return difference(info.get("meta", {}).get("fingerprint"), expected)


def run_teacher_stage(config: Config, paths: ProfilePaths | None = None, progress: bool = True,
                      log: Callable[[str], None] = print) -> Path:
    """Make the profile's teacher model file; returns its path. An existing one is kept only when it carries
    this configuration's fingerprint (said through `log`), else made again (`log` names what differs)."""
    paths = paths or ProfilePaths.of(config.profile)
    expected = teacher_fingerprint(config)
    with output_lock(paths.teacher_dir / ".teacher.lock", f"the teacher {paths.teacher}"):
        if paths.teacher.exists() and kept(f"teacher {paths.teacher}", teacher_difference(paths.teacher, expected),
                                           log):
            return paths.teacher
        _make_teacher(config, paths, expected, progress)
    return paths.teacher


def _make_teacher(config: Config, paths: ProfilePaths, expected: dict, progress: bool) -> None:
    device = resolve_device(config.device)
    tc = config.teacher
    with stage_run(config, "teacher") as run:
        if tc.source == "train":
            from rfpp.data import open_dataset

            data = open_dataset(config.data.dataset, resolution=config.data.resolution)
            images = torch.stack([data[i][0] for i in range(len(data))])
            labels = torch.as_tensor(data.labels) if data.has_labels else None
            net_kwargs = dict(tc.net)
            if net_kwargs.get("img_resolution") != config.data.resolution:
                raise ValueError(f"teacher.net.img_resolution ({net_kwargs.get('img_resolution')}) must equal "
                                 f"data.resolution ({config.data.resolution})")
            result = train_rectified_flow(images, labels, tc.arch, net_kwargs, steps=tc.steps, batch=tc.batch,
                                          lr=tc.lr, ema_decay=tc.ema, seed=config.seed, device=device,
                                          progress=progress, log=lambda step, m: run.log_metrics(m, step))
            net = result.ema_net
            meta = {"source": "train", "kind": "1-rectified flow", "dataset": config.data.dataset,
                    "steps": tc.steps, "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
                    "seconds": round(result.seconds, 2), "images_per_second": round(result.images_per_second, 1)}
            run.log_metrics({"teacher/seconds": result.seconds, "teacher/images_per_second":
                             result.images_per_second}, tc.steps)
            sigma_data = 0.5
        else:
            source = tc.source
            if source.endswith((".pt", ".pth")):
                denoiser: EDMDenoiser = load_state_dict_teacher(source, tc.arch, dict(tc.net))
            else:
                denoiser = load_edm_snapshot(source, expected_sha256=tc.sha256, progress=progress)
                info = getattr(denoiser, "snapshot_info", {})
                if info.get("precond", "EDMPrecond") != "EDMPrecond":
                    raise TeacherLoadError(f"{source} uses {info['precond']}; Reflow students need an EDMPrecond "
                                           "teacher (all of EDM's released edm-*.pkl snapshots are)")
            net = denoiser.net
            if type(net).__name__ != tc.arch:
                raise TeacherLoadError(f"{source} holds a {type(net).__name__}, but the profile says "
                                       f"teacher.arch: {tc.arch}; fix the profile or the source")
            src_path = Path(getattr(denoiser, "snapshot_info", {}).get("source", source))
            meta = {"source": source, "sha256": file_sha256(src_path) if src_path.exists() else None}
            sigma_data = denoiser.sigma_data
        velocity = EDMVelocity(EDMDenoiser(net.to(device).eval(), sigma_data=sigma_data))
        images = preview_samples(velocity, count=tc.grid, nfe=tc.grid_nfe, device=device)
        if not bool(torch.isfinite(images).all()):
            fix = ("train it again with a lower teacher.lr" if tc.source == "train"
                   else "its weights are broken: check or re-download the source")
            raise FloatingPointError(f"the teacher from {tc.source} gives non-finite preview samples (NaN or inf), "
                                     f"so {paths.teacher} was not written; {fix}")
        meta["fingerprint"] = expected
        save_model(paths.teacher, net, sigma_data=sigma_data, meta=meta)
        _write_config(config, paths.teacher_dir)
        write_json(paths.teacher_dir / "teacher.json", meta)
        grid = save_grid(images, paths.teacher_dir / "samples.png", scale=max(1, 64 // velocity.img_resolution))
        run.log_image_file(grid, artifact_path="teacher")
        run.set_tags({"rfpp.teacher.source": str(tc.source)})
