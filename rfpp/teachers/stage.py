"""The teacher stage: results/<profile>/teacher/teacher.pt, an rfpp model file, from any source.

- `teacher.source: train`: a 1-rectified flow trained here on the profile's data (rectified_flow.py),
  with a grid of its samples saved as teacher/samples.png.
- an EDM snapshot name (rfpp.teachers.TEACHERS), URL or .pkl path: downloaded (resumable, sha256
  recorded and checked), loaded without executing anything, its `ema` network written out.
- a .pt/.pth plain state dict of EDMPrecond's `model.…` keys with `teacher.net` as its configuration.
The resolved configuration is saved beside the output as teacher/config.yaml; every teacher's preview grid,
teacher/samples.png, shows `teacher.grid` samples of `teacher.grid_nfe` Heun NFE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rfpp.atomic import write_json, write_text
from rfpp.checkpoints import file_sha256, save_model
from rfpp.config import Config
from rfpp.images import save_grid
from rfpp.nets import EDMDenoiser, EDMVelocity
from rfpp.paths import ProfilePaths
from rfpp.sampling import sample
from rfpp.teachers.edm import TeacherLoadError, load_edm_snapshot, load_state_dict_teacher
from rfpp.teachers.rectified_flow import train_rectified_flow
from rfpp.tracking import start_run


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _write_config(config: Config, folder: Path) -> None:
    write_text(folder / "config.yaml", config.to_yaml())


def sample_grid(velocity: EDMVelocity, path: Path, count: int = 64, nfe: int = 15, seed: int = 0,
                device: torch.device | str = "cpu") -> Path:
    """A grid of `count` samples from a velocity model (Heun, `nfe` NFE, plain update) saved as PNG."""
    res, ch = velocity.img_resolution, velocity.img_channels
    noise = torch.randn(count, ch, res, res, generator=torch.Generator().manual_seed(seed)).to(device)
    labels = torch.arange(count, device=device) % velocity.label_dim if velocity.label_dim else None
    images = sample(velocity, noise, nfe=nfe if nfe % 2 else nfe + 1, solver="heun", update="default",
                    class_labels=labels)
    return save_grid(images.cpu(), path, scale=max(1, 64 // res))


def run_teacher_stage(config: Config, paths: ProfilePaths | None = None, progress: bool = True) -> Path:
    """Make the profile's teacher model file; returns its path (kept as is when it already exists)."""
    paths = paths or ProfilePaths.of(config.profile)
    if paths.teacher.exists():
        return paths.teacher
    device = pick_device(config.device)
    tc = config.teacher
    with start_run(config, stage="teacher") as run:
        run.log_config(config)
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
        save_model(paths.teacher, net, sigma_data=sigma_data, meta=meta)
        _write_config(config, paths.teacher_dir)
        write_json(paths.teacher_dir / "teacher.json", meta)
        velocity = EDMVelocity(EDMDenoiser(net.to(device).eval(), sigma_data=sigma_data))
        grid = sample_grid(velocity, paths.teacher_dir / "samples.png", count=tc.grid, nfe=tc.grid_nfe, device=device)
        run.log_image_file(grid, artifact_path="teacher")
        run.set_tags({"rfpp.teacher.source": str(tc.source)})
    return paths.teacher
