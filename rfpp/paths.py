"""Where each stage reads and writes, under results/<profile>/ (docs/conventions.md, "Layout").

Every stage that writes also saves its resolved configuration beside its output (config.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS_ROOT = Path("results")
RESOURCES_ROOT = Path("resources")


@dataclass(frozen=True)
class ProfilePaths:
    """All result paths of one profile; `root` defaults to results/<profile>."""

    root: Path

    @classmethod
    def of(cls, profile: str, results_root: str | Path = RESULTS_ROOT) -> ProfilePaths:
        return cls(Path(results_root) / profile)

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher(self) -> Path:
        """The teacher as an rfpp model file (rfpp.checkpoints)."""
        return self.teacher_dir / "teacher.pt"

    @property
    def features(self) -> Path:
        """The digits classifier that serves as perceptual network and FID feature extractor."""
        return self.root / "features" / "classifier.pt"

    @property
    def pairs_dir(self) -> Path:
        return self.root / "pairs"

    @property
    def pairs_manifest(self) -> Path:
        return self.pairs_dir / "manifest.json"

    def pair_set_manifest(self, source: str | None) -> Path:
        """The manifest of the pair set training reads: `source`'s (pairs.source, a pair set made elsewhere) when
        given, else the one the pairs stage makes here."""
        return Path(source) / "manifest.json" if source else self.pairs_manifest

    def shard_record(self, shard: int | str) -> Path:
        return shard_files(self.pairs_dir, shard)["record"]

    def shard_files(self, shard: int | str) -> dict[str, Path]:
        """A pair shard's record (.json) and arrays (images, labels .npy)."""
        return shard_files(self.pairs_dir, shard)

    def train_dir(self, arm: str, seed: int | str) -> Path:
        """One training run: arm `arm` with training seed `seed` (train.seeds)."""
        return self.root / "train" / arm / f"seed{seed}"

    def student(self, arm: str, seed: int | str) -> Path:
        """The final EMA student of an arm and seed, as an rfpp model file."""
        return self.train_dir(arm, seed) / "final.pt"

    def samples(self, arm: str, seed: int | str, nfe: int | str) -> Path:
        return self.root / "samples" / arm / f"seed{seed}" / f"nfe{nfe}.npz"

    def sample_files(self, arm: str, seed: int | str, nfe: int | str) -> dict[str, Path]:
        """A sample set (npz) with its metadata (json) and grid (png) beside it."""
        npz = self.samples(arm, seed, nfe)
        return {"npz": npz, "json": npz.with_suffix(".json"), "png": npz.with_suffix(".png")}

    def fid(self, arm: str, seed: int | str, nfe: int | str) -> Path:
        return self.root / "fid" / f"{arm}-seed{seed}-nfe{nfe}.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def report_dir(self) -> Path:
        """The report's figures (report/*.png)."""
        return self.root / "report"

    def log(self, stage: str, *wildcards: object) -> Path:
        """The log of one pipeline job: logs/<stage>.log, or logs/<stage>/<wildcard values joined by '-'>.log."""
        if not wildcards:
            return self.root / "logs" / f"{stage}.log"
        return self.root / "logs" / stage / f"{'-'.join(str(w) for w in wildcards)}.log"


def seed_of(folder: str | Path) -> int | None:
    """The training seed k of a `seed<k>` folder (train/<arm>/seed<k>, samples/<arm>/seed<k>), else None."""
    name = Path(folder).name
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def shard_files(pairs_dir: str | Path, shard: int | str) -> dict[str, Path]:
    """Pair shard `shard` in `pairs_dir`: its record (.json) and arrays (.images.npy, .labels.npy)."""
    pairs_dir = Path(pairs_dir)
    return {"record": pairs_dir / f"shard-{shard}.json", "images": pairs_dir / f"shard-{shard}.images.npy",
            "labels": pairs_dir / f"shard-{shard}.labels.npy"}

