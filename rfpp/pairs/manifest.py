"""The manifest of a pair set, and the verified reader that training uses.

`finalize(out_dir, spec, info, fingerprint)` checks every shard against its record and writes manifest.json:
    {"format": "rfpp.pairs", "version": 2, "spec": PairSpec fields, "teacher": {...}, "sampler": {...},
     "fingerprint": the set's fingerprint (rfpp.provenance; what training records as its input),
     "shards": [{"shard", "start", "stop", "images", "labels", "sha256": {...}}], "noise": {"recipe",
     "check_count", "check_sha256"}, "versions": {...}}
It refuses a shard whose record carries another fingerprint (naming the setting that differs and the command
that remakes the shard), so the manifest never describes data made otherwise; it holds the lock of the
manifest and of every shard while it reads them. Version 1 manifests (no fingerprints) are not read.
`PairDataset(manifest)` re-verifies the files (sha256), regenerates the first noises and compares them
with the recorded hash, and then yields (noise, image, label): noise float32 (C, H, W) regenerated
from (seed, index) (in a set imported from the paper's code, from its recorded PCG64 state: rfpp.pairs.pcg64,
manifest `noise.kind` "pcg64-states", shard files shard-<k>.states.npy), image float32 in [−1, 1], label int64
(−1 unconditional).
"""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rfpp
from rfpp.atomic import write_json
from rfpp.checkpoints import file_sha256
from rfpp.images import from_uint8
from rfpp.pairs import pcg64
from rfpp.pairs.noise import NOISE_RECIPE, make_noise, noise_fingerprint
from rfpp.pairs.shards import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    PairSetError,
    PairSpec,
    read_record,
    record_difference,
    shard_files,
    shard_is_finished,
    shard_lock,
    spec_fingerprint,
)
from rfpp.provenance import output_lock

NOISE_CHECK_COUNT = 4


def versions() -> dict[str, str]:
    return {"rfpp": rfpp.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def finalize(out_dir: str | Path, spec: PairSpec, info: dict[str, Any] | None = None,
             fingerprint: dict[str, Any] | None = None) -> dict:
    """Verify every shard of the set (all made with `fingerprint`, default `spec_fingerprint(spec)`) and write
    manifest.json atomically; returns the manifest. LockedError at once while a shard or the manifest is
    being written by another process."""
    out_dir = Path(out_dir)
    fp = fingerprint or spec_fingerprint(spec)
    with contextlib.ExitStack() as locks:
        locks.enter_context(output_lock(out_dir / f".{MANIFEST_NAME}.lock", f"the pair manifest in {out_dir}"))
        for k in range(spec.num_shards):
            locks.enter_context(shard_lock(out_dir, k))
        return _finalize(out_dir, spec, info or {}, fp)


def _finalize(out_dir: Path, spec: PairSpec, info: dict[str, Any], fp: dict[str, Any]) -> dict:
    remake = f"`rfpp pairs --shard K --num-shards {spec.num_shards}`"
    missing = [k for k in range(spec.num_shards) if not shard_is_finished(out_dir, k)]
    if missing:
        raise PairSetError(f"pair set {out_dir} is incomplete: shard(s) {missing} are not finished; run "
                           f"{remake} for each of them")
    shards = []
    for k in range(spec.num_shards):
        files = shard_files(out_dir, k)
        record = read_record(files["record"])
        why = record_difference(record, spec, fp)
        if record is None or why is not None:
            raise PairSetError(f"shard {k} in {out_dir} was not made with these settings ({why}); remake it with "
                               f"{remake.replace('K', str(k))} and the same settings, then finalize again")
        _check_shard_files(files, record["sha256"], k)
        shards.append({"shard": k, "start": record["start"], "stop": record["stop"],
                       "images": files["images"].name, "labels": files["labels"].name, "sha256": record["sha256"],
                       "seconds": record.get("seconds", {}),
                       **({"states": files["states"].name} if "states" in record["sha256"] else {})})
    if any("states" in entry for entry in shards):  # an imported set: noise from recorded PCG64 states
        first = np.load(out_dir / shards[0]["states"], mmap_mode="r")[:NOISE_CHECK_COUNT]
        noise = {"kind": pcg64.KIND, "recipe": pcg64.RECIPE, "check_count": NOISE_CHECK_COUNT,
                 "check_sha256": pcg64.noise_fingerprint(np.array(first), spec.shape, NOISE_CHECK_COUNT)}
    else:
        noise = {"recipe": NOISE_RECIPE, "check_count": NOISE_CHECK_COUNT,
                 "check_sha256": noise_fingerprint(spec.seed, spec.shape, NOISE_CHECK_COUNT)}
    manifest = {"format": FORMAT, "version": VERSION, "spec": _spec_dict(spec), **info, "fingerprint": fp,
                "shards": shards, "versions": versions(), "noise": noise}
    path = out_dir / MANIFEST_NAME
    if read_record(path) != json.loads(json.dumps(manifest, default=str)):  # an unchanged set: left as it is
        write_json(path, manifest)
    return manifest


def _spec_dict(spec: PairSpec) -> dict:
    return {"count": spec.count, "num_shards": spec.num_shards, "chunk": spec.chunk, "seed": spec.seed,
            "shape": list(spec.shape), "label_dim": spec.label_dim}


def _check_shard_files(files: dict[str, Path], sha: dict[str, str], shard: int) -> None:
    for key in ("images", "labels", "states"):
        if key == "states" and key not in sha:  # rfpp's own pairs: noise from (seed, index), no states file
            continue
        path = files[key]
        if not path.exists():
            raise PairSetError(f"shard {shard} is missing its file {path}; re-run "
                               f"`rfpp pairs --shard {shard}` after deleting {files['record'].name}")
        if file_sha256(path) != sha[key]:
            raise PairSetError(f"shard {shard}'s file {path} is corrupted (sha256 differs from its record); delete "
                               f"{path.name} and {files['record'].name} and re-run `rfpp pairs --shard {shard}`")


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise PairSetError(f"no pair manifest at {path}; run `rfpp pairs` (all shards, then --finalize) first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PairSetError(f"pair manifest {path} is not valid JSON ({err}); "
                           "run `rfpp pairs --finalize` again") from err
    if manifest.get("format") != FORMAT:
        raise PairSetError(f"{path} is not an rfpp pair manifest (no 'format: {FORMAT}')")
    if manifest.get("version") != VERSION:
        raise PairSetError(f"{path} is an rfpp pair manifest of version {manifest.get('version')}, without the "
                           f"provenance records of version {VERSION}; run `rfpp pairs` again (it remakes the shards)")
    return manifest


def spec_from_manifest(manifest: dict) -> PairSpec:
    s = manifest["spec"]
    return PairSpec(count=s["count"], num_shards=s["num_shards"], chunk=s["chunk"], seed=s["seed"],
                    shape=tuple(s["shape"]), label_dim=s["label_dim"])


class PairDataset(torch.utils.data.Dataset):
    """The pairs of a finished set: item i -> (noise (C,H,W) float32, image (C,H,W) float32 in [−1,1], label).

    The images are memory-mapped; the noise is regenerated on the fly (cheap, and the same in any worker).
    """

    def __init__(self, manifest_path: str | Path, verify: bool = True):
        path = Path(manifest_path)
        self.root = path if path.is_dir() else path.parent
        self.manifest = read_manifest(path)
        self.spec = spec_from_manifest(self.manifest)
        if verify:
            for entry in self.manifest["shards"]:
                files = shard_files(self.root, entry["shard"])
                _check_shard_files(files, entry["sha256"], entry["shard"])
        self._states = ([np.load(self.root / e["states"], mmap_mode="r") for e in self.manifest["shards"]]
                        if self.manifest["noise"].get("kind") == pcg64.KIND else None)
        if verify:
            expected, count = self.manifest["noise"]["check_sha256"], self.manifest["noise"]["check_count"]
            if self._states is not None:
                got = pcg64.noise_fingerprint(np.array(self._states[0][:count]), self.spec.shape, count)
                if got != expected:
                    raise PairSetError(f"the noise regenerated from the PCG64 states of {self.root} differs from the "
                                       f"noise recorded at import (manifest {expected[:12]}…, here {got[:12]}…): "
                                       f"numpy changed between {self.manifest['versions']['numpy']} and "
                                       f"{np.__version__}; use the recorded version or import the pairs again")
            else:
                got = noise_fingerprint(self.spec.seed, self.spec.shape, count)
            if got != expected:
                raise PairSetError("the noise regenerated here differs from the noise the pairs were made with "
                                   f"(manifest {expected[:12]}…, here {got[:12]}…): PyTorch's CPU generator changed "
                                   f"between torch {self.manifest['versions']['torch']} and {torch.__version__}; "
                                   "use the recorded version or regenerate the pairs")
        self._images = [np.load(self.root / e["images"], mmap_mode="r") for e in self.manifest["shards"]]
        self._labels = [np.load(self.root / e["labels"], mmap_mode="r") for e in self.manifest["shards"]]
        self._starts = np.array([e["start"] for e in self.manifest["shards"]])
        self._sizes = np.array([e["stop"] - e["start"] for e in self.manifest["shards"]])
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        if self._offsets[-1] != self.spec.count:
            raise PairSetError(f"the shards of {self.root} hold {self._offsets[-1]} pairs, the manifest says "
                               f"{self.spec.count}")

    def __len__(self) -> int:
        return int(self.spec.count)

    def locate(self, i: int) -> tuple[int, int, int]:
        """Item i -> (shard, row in shard, global pair index)."""
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} out of range 0..{len(self) - 1}")
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        row = i - int(self._offsets[shard])
        return shard, row, int(self._starts[shard]) + row

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        shard, row, index = self.locate(i)
        image = from_uint8(torch.from_numpy(np.array(self._images[shard][row])))
        if self._states is not None:  # an imported set: the paper's PCG64 noise
            noise = pcg64.make_noise(np.array(self._states[shard][row:row + 1]), self.spec.shape)[0]
        else:
            noise = make_noise(self.spec.seed, [index], self.spec.shape)[0]
        return noise, image, int(self._labels[shard][row])
