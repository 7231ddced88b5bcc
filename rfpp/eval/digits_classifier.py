"""The digits profile's feature network: a small CNN classifier trained on the digits in seconds.

It serves two roles (docs/conventions.md, "Profiles"):
- the perceptual network of the LPIPS-style loss term: ``forward(x)`` maps images in [−1, 1], shape
  (N, C, H, W), to a list of three feature maps (N, C_l, H_l, W_l) (use it with
  ``rfpp.losses.FeatureLPIPS(net, name="digits-classifier")``);
- the FID feature extractor: ``embed(x)`` is the pooled penultimate vector (64 dims), registered with
  torch-fidelity as the feature extractor ``digits-classifier`` (see ``rfpp.eval.fid``). Its FID stands in
  for Inception's, and every output says so.

The network is resolution-agnostic (two 2× average pools, then a global average pool), so any side ≥ 4
works; it is trained at the profile's resolution.

File format (``ProfilePaths.features``; ``torch.save`` of plain types, loadable with ``weights_only=True``):
    {"format": "rfpp.features", "version": 1, "arch": "DigitsClassifier", "kwargs": constructor kwargs,
     "state_dict": weights, "weights_sha256": sha256 of the weights, "accuracy": held-out accuracy,
     "train": {"seed", "steps", "batch", "lr", "num_train", "num_heldout", "resolution", "seconds", …},
     "fingerprint": the features stage's fingerprint (rfpp.provenance; absent in files saved without one)}
Every load re-hashes the weights and refuses a file whose hash differs from `weights_sha256` (flipped bytes).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rfpp.checkpoints import CheckpointError, atomic_torch_save, safe_torch_load

FORMAT = "rfpp.features"
VERSION = 1
NAME = "digits-classifier"
STAND_IN_NOTE = "digits-classifier features stand in for Inception"


class DigitsClassifier(nn.Module):
    """conv-conv | pool | conv-conv | pool | conv | global pool | fc (embedding) | fc (logits)."""

    name = NAME

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, embed_dim: int = 64,
                 resolution: int = 8) -> None:
        super().__init__()
        self.kwargs = dict(in_channels=in_channels, num_classes=num_classes, width=width, embed_dim=embed_dim,
                           resolution=resolution)
        w = width
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(w, w, 3, padding=1), nn.SiLU())
        self.block2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU())
        self.block3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.SiLU())
        self.embed_fc = nn.Linear(4 * w, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    @property
    def resolution(self) -> int:
        return int(self.kwargs["resolution"])

    @property
    def in_channels(self) -> int:
        return int(self.kwargs["in_channels"])

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images in [−1, 1] (N, C, H, W) → the three block outputs, at full, 1/2 and 1/4 resolution.

        Images of another size are first resized bilinearly to the resolution the network was trained at
        (as LPIPS resizes to VGG's 224), so the perceptual loss and FID see what the classifier knows.
        """
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        f1 = self.block1(x)
        f2 = self.block2(F.avg_pool2d(f1, 2))
        f3 = self.block3(F.avg_pool2d(f2, 2))
        return [f1, f2, f3]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps for the perceptual loss (see `feature_maps`)."""
        return self.feature_maps(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (N, embed_dim): what FID uses."""
        f3 = self.feature_maps(x)[-1]
        return F.silu(self.embed_fc(f3.mean(dim=(2, 3))))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.embed(x))

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        return e, self.head(e)


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights (names, shapes, dtypes and bytes, in key order)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _split(labels: torch.Tensor, heldout: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split of indices: (train, held-out)."""
    train, test = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = max(1, round(idx.numel() * heldout))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random integer translations of up to `max_shift` pixels (padding with the background value −1)."""
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = pad[i, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def accuracy(net: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    """Fraction of correctly classified images."""
    net.eval()
    correct = 0
    for i in range(0, images.shape[0], batch):
        correct += int((net.logits(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return correct / max(1, images.shape[0])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, seed: int = 0, steps: int = 600, batch: int = 64,
                     lr: float = 3e-3, heldout: float = 0.2, width: int = 24, embed_dim: int = 64,
                     progress: bool = False, threads: int | None = 1) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train a DigitsClassifier on images in [−1, 1] (N, C, R, R) with labels 0..K−1; deterministic from `seed`.

    A stratified `heldout` fraction is kept out of training and scored. The net is tiny, so one CPU thread
    (`threads`) is fastest on a busy machine. Returns (network in eval mode, record with held-out accuracy
    and the training settings).
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(images, labels, seed, steps, batch, lr, heldout, width, embed_dim, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(images: torch.Tensor, labels: torch.Tensor, seed: int, steps: int, batch: int, lr: float, heldout: float,
           width: int, embed_dim: int, progress: bool) -> tuple[DigitsClassifier, dict[str, Any]]:
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"expected images (N, C, H, W) and N labels, got {tuple(images.shape)}, {tuple(labels.shape)}")
    labels = labels.long()
    if labels.min() < 0:
        raise ValueError("the feature network needs a labelled dataset (labels ≥ 0)")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train_idx, test_idx = _split(labels, heldout, gen)
    x_train, y_train = images[train_idx], labels[train_idx]
    net = DigitsClassifier(in_channels=images.shape[1], num_classes=int(labels.max()) + 1, width=width,
                           embed_dim=embed_dim, resolution=images.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="training digits classifier", leave=False)
    net.train()
    for _ in iterator:
        idx = torch.randint(0, x_train.shape[0], (batch,), generator=gen)
        x = _augment(x_train[idx], gen)
        loss = F.cross_entropy(net.logits(x), y_train[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    record = {"accuracy": accuracy(net, images[test_idx], labels[test_idx]),
              "train_accuracy": accuracy(net, x_train, y_train), "seed": seed, "steps": steps, "batch": batch,
              "lr": lr, "heldout_fraction": heldout, "num_train": int(train_idx.numel()),
              "num_heldout": int(test_idx.numel()), "resolution": int(images.shape[-1]),
              "seconds": round(time.perf_counter() - start, 2), "final_loss": float(loss.detach())}
    return net, record


def save_feature_net(path: str | Path, net: DigitsClassifier, record: dict[str, Any],
                     fingerprint: dict[str, Any] | None = None) -> Path:
    """Write the feature-network file atomically (see the module docstring for the format); `fingerprint`: the
    stage's provenance record, stored as is."""
    state = {k: v.detach().cpu().float() for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "arch": "DigitsClassifier", "name": NAME,
               "kwargs": dict(net.kwargs), "state_dict": state, "weights_sha256": weights_sha256(state),
               "accuracy": float(record["accuracy"]), "train": {k: v for k, v in record.items() if k != "accuracy"}}
    if fingerprint is not None:
        payload["fingerprint"] = fingerprint
    return atomic_torch_save(payload, path)


def read_feature_net_file(path: str | Path) -> dict[str, Any]:
    """The file's dict, checked: format, version, architecture and the weights' hash."""
    payload = safe_torch_load(path, "feature network file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfpp feature-network file (no 'format: {FORMAT}'); "
                              "make one with `rfpp features`")
    if payload.get("version") != VERSION or payload.get("arch") != "DigitsClassifier":
        raise CheckpointError(f"{path}: unsupported feature network {payload.get('arch')!r} "
                              f"version {payload.get('version')!r}")
    state, recorded = payload.get("state_dict"), payload.get("weights_sha256")
    if not isinstance(state, dict) or not isinstance(recorded, str):
        raise CheckpointError(f"feature network file {path} has no weights or no weights_sha256, so its weights "
                              "cannot be verified; re-create it with `rfpp features`")
    got = weights_sha256(state)
    if got != recorded:
        raise CheckpointError(f"feature network file {path} is corrupted: its weights hash to {got[:12]}…, not the "
                              f"recorded sha256 {recorded[:12]}…; delete it and re-create it with `rfpp features`")
    return payload


def load_feature_net(path: str | Path, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load the digits classifier (frozen, eval mode); `.record` holds accuracy and training settings."""
    payload = read_feature_net_file(path)
    net = DigitsClassifier(**payload["kwargs"])
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit DigitsClassifier{payload['kwargs']}: {err}") from err
    net.requires_grad_(False)
    net.eval()
    net.record = {"accuracy": payload["accuracy"], "weights_sha256": payload["weights_sha256"], **payload["train"]}
    return net.to(device)


def build_feature_net(dataset: str, resolution: int, out: str | Path, seed: int = 0, steps: int = 600,
                      progress: bool = False, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `features` stage: train on a labelled dataset at `resolution`, save to `out` (with the stage's
    `fingerprint`), return the record."""
    from rfpp.data import open_dataset

    ds = open_dataset(dataset, resolution=resolution)
    if not ds.has_labels:
        raise ValueError(f"dataset {dataset!r} has no class labels; the feature network is a classifier")
    images = ds.images if isinstance(getattr(ds, "images", None), torch.Tensor) else torch.stack(
        [ds[i][0] for i in range(len(ds))])
    net, record = train_classifier(images, torch.as_tensor(ds.labels), seed=seed, steps=steps, progress=progress)
    path = save_feature_net(out, net, record, fingerprint=fingerprint)
    return dict(record, path=str(path), dataset=dataset)
