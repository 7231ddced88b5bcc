"""FID (and IS, KID, precision/recall) through torch-fidelity, with the full protocol in every result.

Feature networks:
- ``inception``: torch-fidelity's ``inception-v3-compat`` (the TF-Inception port FID is defined with), pool
  layer ``2048``. Weights: ``eval.inception_weights`` (a local path, or a URL downloaded with
  rfpp.teachers.download), else torch-fidelity's file ``weights-inception-2015-12-05-6726825d.pth`` in the
  torch hub cache, ``$TORCH_HOME/hub/checkpoints/`` (TORCH_HOME defaults to ``~/.cache/torch``), downloaded
  there from ``URL_INCEPTION_V3`` when absent. Every file is first opened with ``weights_only=True`` (nothing
  in it runs) before torch-fidelity reads it.
- ``digits-classifier``: the digits profile's classifier (rfpp.eval.digits_classifier), registered with
  torch-fidelity under that name, its 64-dim pooled layer ``pool``. Its numbers stand in for Inception's and
  every result says so; they are not comparable with published FIDs.

Reference statistics: an .npz with ``mu`` (D,) and ``sigma`` (D, D) (EDM's format, e.g. its fid-refs URLs,
downloaded and checksummed with rfpp.teachers.download), or ``dataset``: computed from ``data.dataset`` with the
same feature network and cached as ``<fid dir>/ref-<hash>.npz`` (hash of dataset, resolution, feature net
sha256 and layer, torch-fidelity version) with a ``.json`` beside it.

Result json (`evaluate`): {"format": "rfpp.fid", "version": 1, "metric": "fid", "value", "metrics": {…},
"protocol": {metric, feature_net, feature_layer, feature_net_sha256, reference, reference_sha256, num_samples,
torch_fidelity}, "protocol_id", "feature_net": {…, "note"}, "reference": {…}, "samples": {path, num_available,
sha256 (of the sample file; None for a PNG folder), fingerprint (the sample set's fingerprint id)}, "sampling": {nfe,
solver, update, schedule, t_start, seed, ema, checkpoint, checkpoint_sha256, checkpoint_step, class_labels},
"straightness", "arm", "profile", "versions", "created"}; `rfpp report` checks that the samples it scored are still
the ones on disk. Samples of another shape than the profile's images are refused (`check_sample_shape`).
`check_comparable` refuses numbers whose protocols differ.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from rfpp.checkpoints import CheckpointError, file_sha256, safe_torch_load
from rfpp.eval.digits_classifier import NAME as DIGITS_NAME
from rfpp.eval.digits_classifier import STAND_IN_NOTE, load_feature_net
from rfpp.eval.errors import FIDError, ProtocolMismatchError
from rfpp.eval.kinds import FEATURE_NETS
from rfpp.images import atomic_write, from_uint8

TORCH_FIDELITY_VERSION: str = torch_fidelity.__version__
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_URL: str = URL_INCEPTION_V3
INCEPTION_FILENAME: str = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
PROTOCOL_KEYS = ("metric", "feature_net", "feature_layer", "feature_net_sha256", "reference_sha256", "num_samples",
                 "torch_fidelity")


# ------------------------------------------------------------------------------------ digits extractor


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor of the digits classifier (uint8 (N, C, H, W) in, C = 1 or 3).

    Features: ``pool`` (the 64-dim pooled penultimate layer: FID/KID/PRC), ``logits`` (IS). The weights come
    from ``feature_extractor_weights_path`` (an rfpp feature-network file). Three-channel input is averaged to
    grey when the classifier is one-channel; other sizes are resized bilinearly to the classifier's.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise FIDError("the digits-classifier feature extractor needs feature_extractor_weights_path "
                           "(the file written by `rfpp features`)")
        self.net = load_feature_net(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("pool", "logits", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.ndim == 4):
            raise FIDError("digits-classifier features expect uint8 images (N, C, H, W)")
        images = from_uint8(x)
        if images.shape[1] != self.net.in_channels:
            if self.net.in_channels == 1:
                images = images.mean(dim=1, keepdim=True)
            elif images.shape[1] == 1:
                images = images.repeat(1, self.net.in_channels, 1, 1)
            else:
                raise FIDError(f"cannot feed {images.shape[1]}-channel images to a {self.net.in_channels}-channel "
                               "classifier")
        if images.shape[-1] != self.net.resolution or images.shape[-2] != self.net.resolution:
            images = F.interpolate(images, size=(self.net.resolution,) * 2, mode="bilinear", align_corners=False)
        pool, logits = self.net.embed_and_logits(images.to(next(self.net.parameters()).device))
        out = {"pool": pool.float(), "logits": logits.float(), "logits_unbiased": logits.float()}
        return tuple(out[name] for name in self.features_list)


def register_digits_extractor() -> None:
    """Register ``digits-classifier`` with torch-fidelity (idempotent)."""
    if DIGITS_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DIGITS_NAME, DigitsFeatureExtractor)


register_digits_extractor()


# ------------------------------------------------------------------------------------ inception weights


def inception_cache_path() -> Path:
    """Where torch-fidelity (torch.hub.load_state_dict_from_url) caches the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _check_weights_file(path: Path) -> None:
    """Open the file with weights_only=True: a plain state dict of tensors, nothing executable."""
    state = safe_torch_load(path, "Inception weights file")
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (torch-fidelity's Inception format)")
    if "fc.weight" not in state or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise CheckpointError(f"{path} does not hold torch-fidelity's inception-v3-compat weights")


def resolve_inception_weights(spec: str | None = None, download_dir: str | Path = "resources") -> tuple[Path, bool]:
    """The Inception weights file → (path, whether it is torch-fidelity's default cache file).

    `spec`: a local path, a URL (downloaded into `download_dir`, checksummed), or None: the torch hub cache
    file, downloaded there from torch-fidelity's URL when absent.
    """
    from rfpp.teachers import DownloadError, download

    if spec:
        if "://" in spec and not spec.startswith("file://"):
            try:
                path = download(spec, dest_dir=download_dir)
            except (DownloadError, OSError) as err:
                raise FIDError(f"cannot download the Inception weights from {spec}: {err}") from err
        else:
            path = Path(spec.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise FIDError(f"Inception weights {path} do not exist (eval.inception_weights)")
        _check_weights_file(path)
        return path, False
    path = inception_cache_path()
    if not path.exists():
        try:
            download(INCEPTION_URL, dest_dir=path.parent)
        except (DownloadError, OSError) as err:
            raise FIDError(f"the Inception weights are not in the torch hub cache ({path}) and cannot be "
                           f"downloaded from {INCEPTION_URL} ({err}). Copy that file there (TORCH_HOME sets the "
                           "cache root) or pass eval.inception_weights=PATH") from err
    _check_weights_file(path)
    return path, True


# ------------------------------------------------------------------------------------ feature networks


@dataclass
class FeatureNetSpec:
    """A feature network as used for one evaluation."""

    name: str  # inception | digits-classifier
    extractor: str  # torch-fidelity's registry name
    layer: str
    path: str
    sha256: str
    note: str | None = None
    default_weights: bool = False
    accuracy: float | None = None


def feature_net_spec(kind: str, features_path: str | Path | None = None, inception_weights: str | None = None,
                     download_dir: str | Path = "resources") -> FeatureNetSpec:
    """Resolve the feature network of `kind` (eval.feature_net) to files and hashes."""
    if kind == "inception":
        path, default = resolve_inception_weights(inception_weights, download_dir)
        sha = file_sha256(path)
        note = None
        if default and not sha.startswith(INCEPTION_FILENAME.rsplit("-", 1)[-1].split(".")[0]):
            note = "the cached Inception weights differ from torch-fidelity's published file (sha256 prefix)"
            warnings.warn(f"{path}: {note}", stacklevel=2)
        return FeatureNetSpec("inception", INCEPTION_EXTRACTOR, "2048", str(path), sha, note, default)
    if kind == "digits-classifier":
        if features_path is None or not Path(features_path).exists():
            raise FIDError(f"the digits feature network {features_path} does not exist; run `rfpp features` first")
        net = load_feature_net(features_path)
        # The weights' hash, not the file's: the file also records the training time, so two runs of the same
        # recipe (same weights, same FIDs) would otherwise count as different protocols.
        return FeatureNetSpec(DIGITS_NAME, DIGITS_NAME, "pool", str(features_path), net.record["weights_sha256"],
                              STAND_IN_NOTE, accuracy=net.record.get("accuracy"))
    raise FIDError(f"unknown feature network {kind!r}; choose one of {FEATURE_NETS}")


def make_extractor(spec: FeatureNetSpec, layers: list[str], device: torch.device) -> FeatureExtractorBase:
    """Build the torch-fidelity extractor of `spec` with the requested feature layers."""
    from torch_fidelity.utils import create_feature_extractor

    weights = None if spec.default_weights else spec.path
    try:
        ext = create_feature_extractor(spec.extractor, layers, cuda=False, feature_extractor_weights_path=weights,
                                       verbose=False)
    except RuntimeError as err:  # load_state_dict of another architecture
        raise FIDError(f"cannot load {spec.extractor} weights from {spec.path}: {str(err).splitlines()[0]}") from err
    return ext.to(device)


class _UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, channels: int | None) -> None:
        self.images, self.channels = images, channels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        if self.channels == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x.contiguous()


def extract_features(extractor: FeatureExtractorBase, images: torch.Tensor, batch: int = 250,
                     device: torch.device | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """uint8 images (N, C, H, W) → {layer: features (N, D)} through torch-fidelity's dataset loop."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise FIDError(f"expected non-empty uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    channels = 3 if extractor.get_name() == INCEPTION_EXTRACTOR else None
    cuda = device is not None and torch.device(device).type == "cuda"
    return get_featuresdict_from_dataset(_UInt8Images(images, channels), extractor, batch, cuda, True, progress)


def profile_image_shape(config: Any) -> tuple[int, int, int]:
    """(channels, height, width) of a profile's images: teacher.net.in_channels (3 where the profile names no net:
    its teacher is an EDM snapshot, all RGB) and data.resolution."""
    resolution = int(config.data.resolution)
    return int((config.teacher.net or {}).get("in_channels", 3)), resolution, resolution


def check_sample_shape(images: torch.Tensor, expected: tuple[int, int, int], source: str, profile: str) -> None:
    """FIDError unless uint8 images (N, C, H, W) are of the profile's shape: features of other images would be
    compared with the reference's (the digits extractor resizes and averages channels silently)."""
    got = tuple(int(d) for d in images.shape[1:])
    if got != tuple(expected):
        have, want = ("x".join(map(str, s)) for s in (got, expected))
        raise FIDError(f"samples {source} are {have} images (channels x height x width), but profile {profile!r} "
                       f"makes {want} (teacher.net.in_channels, data.resolution); score samples of this profile or "
                       "choose the profile they belong to (--profile)")


def statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 of features (N, D)."""
    f = features.double().numpy()
    if f.shape[0] < 2:
        raise FIDError(f"FID statistics need at least 2 samples, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID between two Gaussians, computed by torch-fidelity's formula (float64)."""
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise FIDError(f"statistics of different feature dimensions: {mu1.shape} vs {mu2.shape}; the reference was "
                       "made with another feature network")
    stats = [{"mu": np.asarray(m, np.float64), "sigma": np.asarray(s, np.float64)} for m, s in
             ((mu1, sigma1), (mu2, sigma2))]
    return float(fid_statistics_to_metric(stats[0], stats[1], False)["frechet_inception_distance"])


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write EDM-format statistics (.npz with mu and sigma), atomically."""
    return atomic_write(path, lambda f: np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64)))


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz with mu (D,) and sigma (D, D) (EDM's fid-refs format)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise FIDError(f"{path} is not an .npz of FID statistics with 'mu' and 'sigma' ({type(err).__name__}: "
                       f"{err})") from err
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise FIDError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return mu, sigma


# ------------------------------------------------------------------------------------ reference statistics


def dataset_uint8(spec: str, resolution: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset's images as uint8 (N, C, R, R) and its labels."""
    from rfpp.data import open_dataset
    from rfpp.images import to_uint8

    ds = open_dataset(spec, resolution=resolution)
    n = len(ds) if limit is None else min(limit, len(ds))
    if hasattr(ds, "images") and isinstance(getattr(ds, "images", None), torch.Tensor):
        x = ds.images[:n]
    else:
        x = torch.stack([ds[i][0] for i in range(n)])
    return to_uint8(x), torch.as_tensor(np.asarray(ds.labels[:n]), dtype=torch.int64)


def reference_statistics(reference: str, fnet: FeatureNetSpec, extractor: FeatureExtractorBase, fid_dir: str | Path,
                         dataset: str, resolution: int, expected_sha256: str | None = None,
                         download_dir: str | Path = "resources", batch: int = 250,
                         device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(mu, sigma, description) of the reference: 'dataset' (computed and cached), a URL or a path."""
    from rfpp.teachers import DownloadError, download

    if reference == "dataset":
        key = json.dumps({"dataset": dataset, "resolution": resolution, "feature_net": fnet.name,
                          "feature_net_sha256": fnet.sha256, "layer": fnet.layer,
                          "torch_fidelity": TORCH_FIDELITY_VERSION}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = Path(fid_dir) / f"ref-{digest}.npz"
        desc = {"source": f"dataset:{dataset}@{resolution}", "path": str(path), "computed_by": "rfpp",
                "key": json.loads(key)}
        if path.exists():
            mu, sigma = load_stats(path)
            side = path.with_suffix(".json")
            if side.exists():
                desc["num_images"] = json.loads(side.read_text()).get("num_images")
        else:
            images, _ = dataset_uint8(dataset, resolution)
            feats = extract_features(extractor, images, batch, device)[fnet.layer]
            mu, sigma = statistics(feats)
            save_stats(path, mu, sigma)
            desc["num_images"] = int(images.shape[0])
            text = json.dumps(desc, indent=2, sort_keys=True)
            atomic_write(path.with_suffix(".json"), lambda f: f.write(text.encode()))
        desc["sha256"] = file_sha256(path)
        return mu, sigma, desc
    try:
        path = download(reference, dest_dir=Path(download_dir) / "fid-refs", expected_sha256=expected_sha256)
    except FileNotFoundError as err:
        raise FIDError(f"reference statistics {reference} do not exist (eval.reference)") from err
    except (DownloadError, OSError) as err:
        raise FIDError(f"cannot download the reference statistics {reference}: {err}") from err
    mu, sigma = load_stats(path)
    return mu, sigma, {"source": reference, "path": str(path), "sha256": file_sha256(path), "computed_by": "file"}


# ------------------------------------------------------------------------------------ protocol


def protocol_id(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_comparable(results: list[dict[str, Any]], also: tuple[str, ...] = ()) -> None:
    """Raise ProtocolMismatchError unless every result was measured under the same protocol.

    The protocol (metric, feature network and its sha256 and layer, reference statistics' sha256, number of
    samples, torch-fidelity version) must match; `also` adds sampling keys (e.g. ("solver", "update")).
    """
    if not results:
        return
    first = results[0]
    for other in results[1:]:
        keys = [k for k in PROTOCOL_KEYS if first.get("protocol", {}).get(k) != other.get("protocol", {}).get(k)]
        keys += [k for k in also if first.get("sampling", {}).get(k) != other.get("sampling", {}).get(k)]
        if keys:
            k = keys[0]
            a = first.get("protocol", {}).get(k, first.get("sampling", {}).get(k))
            b = other.get("protocol", {}).get(k, other.get("sampling", {}).get(k))
            raise ProtocolMismatchError(f"FID numbers measured under different protocols cannot be compared: "
                                        f"{', '.join(keys)} differ (e.g. {k}: {a!r} vs {b!r})")


def compare(a: dict[str, Any], b: dict[str, Any]) -> float:
    """a's FID minus b's, refusing results of different protocols."""
    check_comparable([a, b])
    return float(a["value"]) - float(b["value"])


def read_result(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != "rfpp.fid":
        raise FIDError(f"{path} is not an rfpp FID result")
    return data


# ------------------------------------------------------------------------------------ evaluation


def evaluate_images(images: torch.Tensor, fnet: FeatureNetSpec, reference: str, fid_dir: str | Path, dataset: str,
                    resolution: int, *, num_samples: int | None = None, isc: bool = False, kid: bool = False,
                    prc: bool = False, kid_subset_size: int = 1000, batch: int = 250,
                    device: torch.device | None = None, reference_sha256: str | None = None,
                    download_dir: str | Path = "resources", progress: bool = False) -> dict[str, Any]:
    """FID (and optional IS/KID/PRC) of uint8 images against the reference → the result dict (no sampling part)."""
    if num_samples is not None:
        if images.shape[0] < num_samples:
            raise FIDError(f"the protocol asks for {num_samples} samples (eval.num_samples) but only "
                           f"{images.shape[0]} are there; sample more or lower eval.num_samples")
        images = images[:num_samples]
    layers = [fnet.layer]
    isc_layer = "logits_unbiased" if fnet.extractor == INCEPTION_EXTRACTOR else "logits"
    if isc:
        layers.append(isc_layer)
    extractor = make_extractor(fnet, layers, device or torch.device("cpu"))
    start = time.perf_counter()
    feats = extract_features(extractor, images, batch, device, progress)
    mu, sigma = statistics(feats[fnet.layer])
    rmu, rsigma, ref = reference_statistics(reference, fnet, extractor, fid_dir, dataset, resolution,
                                            reference_sha256, download_dir, batch, device)
    metrics: dict[str, Any] = {"fid": frechet_distance(mu, sigma, rmu, rsigma)}
    notes = [fnet.note] if fnet.note else []
    from torch_fidelity.metric_isc import isc_features_to_metric

    if isc:
        metrics.update(isc_features_to_metric(feats[isc_layer], splits=10, shuffle=True, rng_seed=2020))
    if kid or prc:
        if reference != "dataset":
            notes.append("KID and precision/recall need reference features; an .npz of mu/sigma has none, so "
                         "they were skipped")
        else:
            ref_images, _ = dataset_uint8(dataset, resolution)
            ref_feats = extract_features(extractor, ref_images, batch, device)[fnet.layer]
            if kid:
                from torch_fidelity.metric_kid import kid_features_to_metric

                size = min(kid_subset_size, images.shape[0], ref_feats.shape[0])
                metrics.update(kid_features_to_metric(feats[fnet.layer], ref_feats, kid_subsets=100,
                                                      kid_subset_size=size, verbose=False, rng_seed=2020))
            if prc:
                from torch_fidelity.metric_prc import prc_features_to_metric

                metrics.update(prc_features_to_metric(feats[fnet.layer], ref_feats, verbose=False,
                                                      save_cpu_ram=True))
    protocol = {"metric": "fid", "feature_net": fnet.name, "feature_layer": fnet.layer,
                "feature_net_sha256": fnet.sha256, "reference": ref["source"], "reference_sha256": ref["sha256"],
                "num_samples": int(images.shape[0]), "torch_fidelity": TORCH_FIDELITY_VERSION}
    return {"format": "rfpp.fid", "version": 1, "metric": "fid", "value": metrics["fid"], "metrics": metrics,
            "protocol": protocol, "protocol_id": protocol_id({k: protocol[k] for k in PROTOCOL_KEYS}),
            "feature_net": asdict(fnet), "reference": ref, "notes": notes,
            "seconds": round(time.perf_counter() - start, 2),
            "versions": {"torch_fidelity": TORCH_FIDELITY_VERSION, "torch": torch.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda f: f.write(text.encode()))
