"""What a run shows while it trains: a fixed evaluation batch, straightness, sample grids, the timestep histogram.

The evaluation batch is the noise (and labels) of the first `eval_batch` pairs: the same in every run of a
profile. At intervals, on rank 0, the EMA student samples it at NFE 1 and 2 (sample.solver/update) into PNG
grids and integrates it with `straightness_nfe` Euler steps (plain update) to measure straightness
(docs/conventions.md). Timesteps drawn in training are counted in a histogram of HIST_BINS bins over [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rfpp.images import save_grid
from rfpp.pairs import PairDataset
from rfpp.sampling import sample, straightness
from rfpp.sampling.grids import T_START

HIST_BINS = 50


def eval_batch(dataset: PairDataset, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(noise (n, C, H, W), labels (n,) or None) of the first n pairs."""
    n = min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    noise = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return noise, (None if bool((labels < 0).all()) else labels)


@torch.no_grad()
def evaluate(velocity: nn.Module, noise: torch.Tensor, labels: torch.Tensor | None, out_dir: Path, step: int,
             solver: str, update: str, straightness_nfe: int, scale: int = 1,
             t_start: float = T_START) -> tuple[dict[str, float], list[Path]]:
    """Straightness and NFE 1 / 2 grids of the (EMA) student (grids from `t_start`) → (metrics, PNG paths)."""
    velocity.eval()
    metrics: dict[str, float] = {}
    pngs: list[Path] = []
    _, trajectory = sample(velocity, noise, nfe=straightness_nfe, solver="euler", update="default",
                           class_labels=labels, return_trajectory=True)
    metrics["straightness"] = float(straightness(trajectory))
    for nfe in (1, 2):
        nfe_solver = solver if solver != "heun" or nfe % 2 else "euler"  # Heun needs an odd NFE
        images = sample(velocity, noise, nfe=nfe, solver=nfe_solver, update=update, class_labels=labels,
                        t_start=t_start)
        pngs.append(save_grid(images.float().clamp(-1, 1).cpu(), out_dir / f"step-{step:08d}-nfe{nfe}.png",
                              scale=scale))
    return metrics, pngs


def timestep_histogram_png(hist: torch.Tensor, path: Path, title: str) -> Path:
    """A bar chart of the drawn timesteps' histogram (density over [0, 1]) as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = hist.double().cpu()
    total = float(counts.sum()) or 1.0
    width = 1.0 / len(counts)
    centres = (torch.arange(len(counts), dtype=torch.float64) + 0.5) * width
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.bar(centres.numpy(), (counts / total / width).numpy(), width=width, color="#4477aa")
    ax.set_xlabel("t (0 data, 1 noise)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
