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

    def shard_record(self, shard: int) -> Path:
        return self.pairs_dir / f"shard-{shard}.json"

    def train_dir(self, arm: str) -> Path:
        return self.root / "train" / arm

    def student(self, arm: str) -> Path:
        """The final EMA student of an arm, as an rfpp model file."""
        return self.train_dir(arm) / "final.pt"

    def samples(self, arm: str, nfe: int) -> Path:
        return self.root / "samples" / arm / f"nfe{nfe}.npz"

    def fid(self, arm: str, nfe: int) -> Path:
        return self.root / "fid" / f"{arm}-nfe{nfe}.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"
