"""The digits classifier: training, file format, LPIPS role, torch-fidelity registration, FID separation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfpp.checkpoints import CheckpointError
from rfpp.data import DigitsDataset
from rfpp.eval import DigitsClassifier, load_feature_net, save_feature_net, train_classifier
from rfpp.images import to_uint8


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    ds = DigitsDataset(resolution=8)
    return ds.images, torch.as_tensor(ds.labels)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """The default recipe (what `rfpp features` runs), saved to a file."""
    net, record = train_classifier(*digits, seed=0)
    path = save_feature_net(tmp_path_factory.mktemp("features") / "classifier.pt", net, record)
    return net, record, path


def test_default_recipe_is_accurate_and_fast(trained):
    _, record, _ = trained
    assert record["accuracy"] >= 0.95, record
    assert record["num_heldout"] >= 300 and record["num_train"] + record["num_heldout"] == 1797
    assert record["seconds"] < 60


def test_training_is_deterministic(digits):
    a, ra = train_classifier(*digits, seed=3, steps=15)
    b, rb = train_classifier(*digits, seed=3, steps=15)
    c, _ = train_classifier(*digits, seed=4, steps=15)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert ra["accuracy"] == rb["accuracy"]


def test_file_round_trip_weights_only(trained, digits):
    net, record, path = trained
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "rfpp.features" and payload["arch"] == "DigitsClassifier"
    assert payload["accuracy"] == pytest.approx(record["accuracy"]) and len(payload["weights_sha256"]) == 64
    loaded = load_feature_net(path)
    x = digits[0][:10]
    assert torch.allclose(loaded.embed(x), net.embed(x))
    assert loaded.record["accuracy"] == pytest.approx(record["accuracy"])
    assert not any(p.requires_grad for p in loaded.parameters())


def test_feature_maps_and_embedding_shapes(trained):
    net = trained[0]
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    maps = net(x)
    assert isinstance(maps, list) and len(maps) == 3
    assert [tuple(m.shape[2:]) for m in maps] == [(8, 8), (4, 4), (2, 2)]
    assert net.embed(x).shape == (4, 64) and net.logits(x).shape == (4, 10)
    big = DigitsClassifier(resolution=16)
    assert big.embed(torch.zeros(2, 1, 16, 16)).shape == (2, 64)


def test_serves_as_lpips_network(trained, digits):
    from rfpp.losses import FeatureLPIPS

    lp = FeatureLPIPS(trained[0], name="digits-classifier")
    x, y = digits[0][:6], digits[0][6:12]
    assert torch.allclose(lp(x, x), torch.zeros(6), atol=1e-6)
    assert (lp(x, y) > 0).all()
    xr = x.clone().requires_grad_(True)
    lp(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert "digits-classifier" in lp.describe()


def test_corrupted_and_foreign_files_are_refused(trained, tmp_path):
    _, _, path = trained
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.bias"] += 1
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="sha256"):
        load_feature_net(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something"}, other)
    with pytest.raises(CheckpointError, match="not an rfpp feature-network file"):
        load_feature_net(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_feature_net(tmp_path / "missing.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_feature_net(truncated)


def test_registered_with_torch_fidelity_and_separates_digits_from_noise(trained, digits, tmp_path):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from rfpp.eval.fid import DigitsFeatureExtractor, evaluate_images, feature_net_spec

    assert FEATURE_EXTRACTORS_REGISTRY["digits-classifier"] is DigitsFeatureExtractor
    spec = feature_net_spec("digits-classifier", trained[2])
    assert spec.note == "digits-classifier features stand in for Inception"
    images = to_uint8(digits[0])
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    real = images[perm[:600]]
    gen = torch.Generator().manual_seed(1)
    noise = to_uint8(torch.rand(600, 1, 8, 8, generator=gen) * 2 - 1)
    kwargs = dict(fid_dir=tmp_path, dataset="digits", resolution=8, batch=300)
    r_real = evaluate_images(real, spec, "dataset", **kwargs)
    r_noise = evaluate_images(noise, spec, "dataset", **kwargs)
    r_self = evaluate_images(images, spec, "dataset", **kwargs)
    assert r_self["value"] == pytest.approx(0.0, abs=1e-6)
    assert r_noise["value"] > 20 * max(r_real["value"], 1e-3)
    assert r_real["protocol"]["feature_net"] == "digits-classifier"
    assert "stand in for Inception" in " ".join(r_real["notes"])
    assert len(list(tmp_path.glob("ref-*.npz"))) == 1  # computed once, then cached
    # 3-channel input (torch-fidelity's PNG loaders give RGB) is read as grey.
    ext = DigitsFeatureExtractor("digits-classifier", ["pool"], feature_extractor_weights_path=str(trained[2]))
    grey, = ext(images[:5])
    rgb, = ext(images[:5].expand(-1, 3, -1, -1))
    assert np.allclose(grey.numpy(), rgb.numpy(), atol=1e-5)


def test_images_of_another_size_are_resized_to_the_classifier_resolution():
    """A classifier trained at 16×16 sees 8×8 digits upsampled bilinearly (as LPIPS resizes to 224), in the
    perceptual loss and in FID alike."""
    torch.manual_seed(0)
    net = DigitsClassifier(resolution=16).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        for a, b in zip(net.feature_maps(x), net.feature_maps(up), strict=True):
            assert a.shape[-1] == b.shape[-1] and torch.equal(a, b)
        assert torch.equal(net.embed(x), net.embed(up))
