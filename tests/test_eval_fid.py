"""FID: torch-fidelity's formula, EDM-format .npz statistics (local and over HTTP), protocol checks, and
Inception through torch-fidelity's own loading code from a fixture weights file in the torch hub cache."""

from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
from local_http_server import LocalFileServer
from weight_files import write_random_inception

from rfpp.checkpoints import file_sha256
from rfpp.data import DigitsDataset
from rfpp.eval import save_feature_net, train_classifier
from rfpp.eval.fid import (
    INCEPTION_FILENAME,
    FIDError,
    ProtocolMismatchError,
    check_comparable,
    check_sample_shape,
    compare,
    evaluate_images,
    extract_features,
    feature_net_spec,
    frechet_distance,
    inception_cache_path,
    load_stats,
    make_extractor,
    profile_image_shape,
    save_stats,
    statistics,
)
from rfpp.images import to_uint8


def _reference_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_an_independent_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) * 1.5 + 0.3
    (m1, s1), (m2, s2) = statistics(torch.from_numpy(a)), statistics(torch.from_numpy(b))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_reference_fid(m1, s1, m2, s2), rel=1e-6)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(FIDError, match="different feature dimensions"):
        frechet_distance(m1, s1, m1[:3], s1[:3, :3])


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    ds = DigitsDataset(resolution=8)
    net, record = train_classifier(ds.images, torch.as_tensor(ds.labels), seed=0, steps=40)
    path = save_feature_net(tmp_path_factory.mktemp("fnet") / "classifier.pt", net, record)
    return feature_net_spec("digits-classifier", path), to_uint8(ds.images)


def test_digits_protocol_hashes_the_weights_not_the_file(digits_net, tmp_path):
    """Retraining the classifier with the same recipe gives the same weights but another file (its record holds
    the training time); the FID protocol must not tell the two apart."""
    spec, images = digits_net
    ds = DigitsDataset(resolution=8)
    net, record = train_classifier(ds.images, torch.as_tensor(ds.labels), seed=0, steps=40)
    again = save_feature_net(tmp_path / "again.pt", net, dict(record, seconds=record["seconds"] + 1.0))
    assert file_sha256(again) != file_sha256(spec.path)
    spec2 = feature_net_spec("digits-classifier", again)
    assert spec2.sha256 == spec.sha256
    kw = dict(fid_dir=tmp_path, dataset="digits", resolution=8, num_samples=100)
    check_comparable([evaluate_images(images[:100], spec, "dataset", **kw),
                      evaluate_images(images[:100], spec2, "dataset", **kw)])
    other, rec = train_classifier(ds.images, torch.as_tensor(ds.labels), seed=1, steps=40)
    assert feature_net_spec("digits-classifier", save_feature_net(tmp_path / "s1.pt", other, rec)).sha256 != spec.sha256


def test_edm_npz_reference(digits_net, tmp_path):
    spec, images = digits_net
    a, b = images[:400], images[400:800].flip(-1)  # b: mirrored digits, another distribution
    feats = extract_features(make_extractor(spec, ["pool"], torch.device("cpu")), a)["pool"]
    ref = save_stats(tmp_path / "ref.npz", *statistics(feats))
    with np.load(ref) as data:  # EDM's format: exactly mu and sigma
        assert sorted(data.files) == ["mu", "sigma"] and data["sigma"].shape == (64, 64)
    kw = dict(fid_dir=tmp_path, dataset="digits", resolution=8)
    same = evaluate_images(a, spec, str(ref), **kw)
    other = evaluate_images(b, spec, str(ref), **kw)
    assert other["value"] > 0 and abs(same["value"]) < 1e-4 * other["value"]
    assert same["reference"]["sha256"] == same["protocol"]["reference_sha256"]
    assert same["protocol"]["torch_fidelity"] == "0.4.0"
    check_comparable([same, other])
    assert compare(other, same) == pytest.approx(other["value"] - same["value"])


def test_bad_statistics_files(digits_net, tmp_path):
    spec, images = digits_net
    kw = dict(fid_dir=tmp_path, dataset="digits", resolution=8)
    wrong_dim = save_stats(tmp_path / "inception.npz", np.zeros(2048), np.eye(2048))
    with pytest.raises(FIDError, match="another feature network"):
        evaluate_images(images[:50], spec, str(wrong_dim), **kw)
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(64))
    with pytest.raises(FIDError, match="mu' and 'sigma"):
        evaluate_images(images[:50], spec, str(tmp_path / "nosigma.npz"), **kw)
    with pytest.raises(FIDError, match="do not exist"):
        evaluate_images(images[:50], spec, str(tmp_path / "missing.npz"), **kw)
    with pytest.raises(FIDError, match="asks for 100 samples"):
        evaluate_images(images[:50], spec, "dataset", num_samples=100, **kw)


def test_reference_downloaded_over_http_and_checksummed(digits_net, tmp_path):
    spec, images = digits_net
    feats = extract_features(make_extractor(spec, ["pool"], torch.device("cpu")), images[:300])["pool"]
    data = save_stats(tmp_path / "src.npz", *statistics(feats)).read_bytes()
    with LocalFileServer({"/fid-refs/digits-8x8.npz": data}) as srv:
        url = srv.url("/fid-refs/digits-8x8.npz")
        result = evaluate_images(images[:300], spec, url, fid_dir=tmp_path, dataset="digits", resolution=8,
                                 download_dir=tmp_path / "resources")
    assert result["value"] == pytest.approx(0.0, abs=1e-6)
    assert result["protocol"]["reference"] == url
    assert (tmp_path / "resources" / "fid-refs" / "digits-8x8.npz").exists()


def test_protocol_mismatch_is_refused(digits_net, tmp_path):
    spec, images = digits_net
    kw = dict(fid_dir=tmp_path, dataset="digits", resolution=8)
    r100 = evaluate_images(images[:300], spec, "dataset", num_samples=100, **kw)
    r200 = evaluate_images(images[:300], spec, "dataset", num_samples=200, **kw)
    with pytest.raises(ProtocolMismatchError, match="num_samples"):
        check_comparable([r100, r200])
    with pytest.raises(ProtocolMismatchError):
        compare(r100, r200)
    r100b = dict(r100, sampling={"solver": "heun"})
    check_comparable([dict(r100, sampling={"solver": "euler"}), r100b])
    with pytest.raises(ProtocolMismatchError, match="solver"):
        check_comparable([dict(r100, sampling={"solver": "euler"}), r100b], also=("solver",))


def test_extra_metrics_with_a_dataset_reference(digits_net, tmp_path):
    spec, images = digits_net
    r = evaluate_images(images[:300], spec, "dataset", fid_dir=tmp_path, dataset="digits", resolution=8, isc=True,
                        kid=True, prc=True, kid_subset_size=100)
    for key in ("inception_score_mean", "kernel_inception_distance_mean", "precision", "recall"):
        assert key in r["metrics"]
    skipped = evaluate_images(images[:300], spec, str(save_stats(tmp_path / "s.npz", np.zeros(64), np.eye(64))),
                              fid_dir=tmp_path, dataset="digits", resolution=8, kid=True)
    assert "kernel_inception_distance_mean" not in skipped["metrics"]
    assert any("skipped" in n for n in skipped["notes"])


# ------------------------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def inception_home(tmp_path_factory):
    """TORCH_HOME with a random-weight inception-v3-compat state dict under torch-fidelity's file name."""
    home = tmp_path_factory.mktemp("torch_home")
    return home, write_random_inception(home)


@pytest.mark.slow
def test_inception_from_the_hub_cache_and_a_local_path(inception_home, digits_net, tmp_path, monkeypatch):
    home, path = inception_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    torch.set_num_threads(2)  # Inception at 299x299 is real work (the module fixture restores the count)
    assert inception_cache_path() == path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's hash differs from torch-fidelity's published file
        spec = feature_net_spec("inception")
    assert spec.default_weights and spec.layer == "2048" and spec.extractor == "inception-v3-compat"
    _, digits = digits_net
    a, b = digits[:4], digits[4:8]
    # Default weights: torch-fidelity finds the file in the hub cache itself (load_state_dict_from_url).
    with mock.patch("torch.hub.download_url_to_file", side_effect=AssertionError("must not download")):
        ext = make_extractor(spec, ["2048"], torch.device("cpu"))
        fa = extract_features(ext, a, batch=4)["2048"]
    assert fa.shape == (4, 2048) and fa.std() > 1e-3
    ref = save_stats(tmp_path / "ref.npz", *statistics(fa))
    # A local path (eval.inception_weights) goes through torch-fidelity's feature_extractor_weights_path.
    local = feature_net_spec("inception", inception_weights=str(path))
    assert not local.default_weights and local.sha256 == spec.sha256
    r_same = evaluate_images(a, local, str(ref), fid_dir=tmp_path, dataset="digits", resolution=8, batch=4)
    fb = extract_features(ext, b, batch=4)["2048"]
    # FID(b) >= |mu_b - mu_a|^2 (the trace term is non-negative): a lower bound without another 2048^3 eigvals.
    other_lower_bound = float(((statistics(fb)[0] - load_stats(ref)[0]) ** 2).sum())
    assert other_lower_bound > 0 and abs(r_same["value"]) < 1e-3 * other_lower_bound
    assert r_same["protocol"]["feature_net"] == "inception" and r_same["feature_net"]["note"] is None


def test_inception_missing_offline_and_foreign_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    with LocalFileServer({}) as srv:  # torch-fidelity's URL answering 404: an offline machine
        monkeypatch.setattr("rfpp.eval.fid.INCEPTION_URL", srv.url("/" + INCEPTION_FILENAME))
        with pytest.raises(FIDError, match="eval.inception_weights"):
            feature_net_spec("inception")
    with pytest.raises(FIDError, match="do not exist"):
        feature_net_spec("inception", inception_weights=str(tmp_path / "nope.pth"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(2)}, foreign)
    from rfpp.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="inception-v3-compat"):
        feature_net_spec("inception", inception_weights=str(foreign))


def test_samples_of_another_shape_than_the_profiles_are_refused():
    from rfpp.config import load_config

    digits, cifar = load_config("digits"), load_config("cifar10")
    assert profile_image_shape(digits) == (1, 8, 8) and profile_image_shape(cifar) == (3, 32, 32)
    check_sample_shape(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), (1, 8, 8), "ok.npz", "digits")
    for shape in ((2, 3, 8, 8), (2, 1, 16, 16)):
        with pytest.raises(FIDError, match=r"x\d+ images .* but profile 'digits' makes 1x8x8"):
            check_sample_shape(torch.zeros(shape, dtype=torch.uint8), (1, 8, 8), "x.npz", "digits")
