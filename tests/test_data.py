"""The on-disk image convention (rfpp.images) and the datasets (rfpp.data)."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from rfpp.data import (
    DatasetError,
    DigitsDataset,
    EdmZipWriter,
    ImageFileDataset,
    edm_image_name,
    open_dataset,
    write_edm_zip,
)
from rfpp.images import from_uint8, save_grid, save_png_folder, to_uint8


def _random_uint8(n: int, c: int, r: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, r, r), dtype=np.uint8)


def _write_png(path: Path, chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = chw.transpose(1, 2, 0)
    PIL.Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(path)


# --- rfpp.images ------------------------------------------------------------------------------------------


def test_uint8_roundtrip_exact_for_every_value():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(u)), u)
    assert torch.equal(to_uint8(from_uint8(u).double()), u)
    assert torch.equal(to_uint8(from_uint8(u).half()), u)  # half precision still lands on u + 0.5 ± 0.1
    assert from_uint8(u).dtype == torch.float32
    assert from_uint8(u)[0] == -1 and from_uint8(u)[255] == 1


def test_float_roundtrip_within_half_level():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    x = torch.cat([x.flatten(), torch.tensor([-1.0, 1.0, 0.0, 1 - 1e-7, -1 + 1e-7])])
    err = (from_uint8(to_uint8(x)) - x).abs().max()
    assert err <= 0.5 / 127.5 + 1e-6


def test_to_uint8_formula_and_clipping():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 7.0, float("inf"), float("-inf"), float("nan")])
    u = to_uint8(x)
    assert u.dtype == torch.uint8
    assert u.tolist() == [0, 0, 128, 191, 255, 255, 255, 0, 128]  # floor(0.5·127.5 + 128) = floor(191.75)
    with pytest.raises(TypeError):
        to_uint8(torch.zeros(3, dtype=torch.uint8))


def test_save_grid_and_png_folder(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    path = save_grid(x, tmp_path / "sub" / "grid.png", nrow=3, padding=2)
    with PIL.Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (3 * 10 + 2, 2 * 10 + 2)
        grid = np.asarray(img)
    assert np.array_equal(grid[2:10, 2:10].transpose(2, 0, 1), to_uint8(x[0]).numpy())
    path = save_grid(x[:, :1], tmp_path / "grey.png", scale=2)  # default nrow = ceil(sqrt(5)) = 3
    with PIL.Image.open(path) as img:
        assert img.mode == "L" and img.size == (3 * 18 + 2, 2 * 18 + 2)
    assert not list(tmp_path.rglob("*.tmp"))

    paths = save_png_folder(x, tmp_path / "folder", start_index=10)
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(10, 15)]
    ds = open_dataset(tmp_path / "folder")
    assert len(ds) == 5 and not ds.has_labels
    assert torch.equal(ds[0][0], from_uint8(to_uint8(x[0])))


# --- digits -----------------------------------------------------------------------------------------------


def test_digits():
    ds = open_dataset("digits")
    assert isinstance(ds, DigitsDataset)
    assert len(ds) == 1797
    assert (ds.resolution, ds.channels, ds.label_dim, ds.has_labels) == (8, 1, 10, True)
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    imgs = ds.images
    assert imgs.min() == -1 and imgs.max() == 1
    assert torch.equal(torch.round((imgs + 1) * 8), (imgs + 1) * 8)  # values v/8 − 1, v ∈ 0..16
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    assert ds[-1][1] == int(ds.labels[-1])
    with pytest.raises(IndexError):
        ds[1797]


@pytest.mark.parametrize("resolution", [16, 32])
def test_digits_upsampled(resolution):
    ds = open_dataset("digits", resolution=resolution)
    base = DigitsDataset()
    assert ds.resolution == resolution and ds.native_resolution == 8
    x, y = ds[3]
    assert x.shape == (1, resolution, resolution) and y == base[3][1]
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    expected = torch.nn.functional.interpolate(base.images[3:4], size=resolution, mode="bilinear",
                                               align_corners=False, antialias=False)[0]
    assert torch.allclose(x, expected)
    # Averaging each k×k block back roughly recovers the 8×8 original.
    k = resolution // 8
    down = torch.nn.functional.avg_pool2d(x[None], k)[0]
    assert (down - base[3][0]).abs().mean() < 0.15


# --- image folders ----------------------------------------------------------------------------------------


def test_image_folder_without_and_with_json(tmp_path):
    u = _random_uint8(6, 3, 8)
    names = [f"a/{i}.png" for i in range(3)] + [f"b/{i}.png" for i in range(3)]
    for name, img in zip(names, u, strict=True):
        _write_png(tmp_path / name, img)
    (tmp_path / "notes.txt").write_text("ignored")

    ds = open_dataset(str(tmp_path))
    assert isinstance(ds, ImageFileDataset)
    assert (len(ds), ds.resolution, ds.channels, ds.has_labels, ds.label_dim) == (6, 8, 3, False, 0)
    assert ds.names == names
    for i in range(6):
        x, y = ds[i]
        assert x.dtype == torch.float32 and y == -1
        assert torch.equal(to_uint8(x), torch.from_numpy(u[i]))

    sub = open_dataset(tmp_path, labels="subfolders")
    assert sub.class_names == ["a", "b"] and sub.labels.tolist() == [0, 0, 0, 1, 1, 1] and sub.label_dim == 2

    labels = [4, 0, 2, 2, 1, 3]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [[n, v] for n, v in zip(names, labels, strict=True)]}))
    ds = open_dataset(tmp_path, resolution=16)
    assert ds.has_labels and ds.label_dim == 5 and [ds[i][1] for i in range(6)] == labels
    assert ds[0][0].shape == (3, 16, 16)
    assert not open_dataset(tmp_path, labels="none").has_labels

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": None}))
    assert not open_dataset(tmp_path).has_labels


def test_jpeg_and_grey_folder(tmp_path):
    img = _random_uint8(1, 1, 16)[0]
    _write_png(tmp_path / "x.png", img)
    PIL.Image.fromarray(img[0]).save(tmp_path / "y.JPG", quality=95)
    ds = open_dataset(tmp_path)
    assert len(ds) == 2 and ds.channels == 1 and ds[1][0].shape == (1, 16, 16)


# --- EDM zips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,labeled", [(3, True), (1, False)])
def test_edm_zip_roundtrip(tmp_path, channels, labeled):
    u = _random_uint8(12, channels, 8, seed=channels)
    labels = list(np.arange(12) % 4) if labeled else None
    path = write_edm_zip(torch.from_numpy(u), labels, tmp_path / "out" / "set.zip")
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    with zipfile.ZipFile(path) as z:
        assert z.namelist()[0] == "00000/img00000000.png" and "dataset.json" in z.namelist()
        meta = json.loads(z.read("dataset.json"))
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    if labeled:
        assert meta["labels"][5] == ["00000/img00000005.png", 1]
    else:
        assert meta == {"labels": None}

    ds = open_dataset(str(path))
    assert (len(ds), ds.channels, ds.resolution, ds.has_labels) == (12, channels, 8, labeled)
    back = torch.stack([to_uint8(ds[i][0]) for i in range(len(ds))])
    assert torch.equal(back, torch.from_numpy(u))
    assert np.array_equal(np.stack([ds.load_uint8(i) for i in range(len(ds))]), u)
    if labeled:
        assert [ds[i][1] for i in range(12)] == labels and ds.label_dim == 4
    assert edm_image_name(123456) == "00123/img00123456.png"


def test_edm_zip_writer_batches_and_abort(tmp_path):
    path = tmp_path / "b.zip"
    with EdmZipWriter(path) as w:
        w.add(_random_uint8(3, 3, 4, seed=1), [0, 1, 2])
        w.add(_random_uint8(2, 3, 4, seed=2), np.array([3, 4]))
        with pytest.raises(ValueError, match="shape"):
            w.add(_random_uint8(1, 3, 8), [0])
        with pytest.raises(ValueError, match="labels"):
            w.add(_random_uint8(1, 3, 4), None)
    assert open_dataset(path).labels.tolist() == [0, 1, 2, 3, 4]

    with pytest.raises(RuntimeError), EdmZipWriter(tmp_path / "c.zip") as w:
        w.add(_random_uint8(1, 3, 4), None)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(TypeError, match="uint8"):
        write_edm_zip(torch.zeros(1, 3, 4, 4), None, tmp_path / "d.zip")


def test_dataloader_workers_over_zip(tmp_path):
    u = _random_uint8(20, 3, 8, seed=3)
    path = write_edm_zip(u, list(range(20)), tmp_path / "w.zip")
    ds = open_dataset(path)
    ds[0]  # the parent opens its handle first: workers must reopen their own after the fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    xs, ys = zip(*loader, strict=True)
    assert torch.equal(to_uint8(torch.cat(xs)), torch.from_numpy(u))
    assert torch.cat(ys).tolist() == list(range(20))

    clone = pickle.loads(pickle.dumps(ds))  # what spawn-started workers receive
    assert clone._zipfile is None and torch.equal(clone[7][0], ds[7][0])


# --- errors -----------------------------------------------------------------------------------------------


def test_error_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset("missing.zip")


def test_error_unknown_spec(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset spec 'cifar11'"):
        open_dataset("cifar11")
    f = tmp_path / "data.npz"
    f.write_bytes(b"x")
    with pytest.raises(DatasetError, match="directory or a .zip"):
        open_dataset(f)


def test_error_empty_folder_and_zip(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="no PNG/JPEG images"):
        open_dataset(tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("dataset.json", json.dumps({"labels": None}))
    with pytest.raises(DatasetError, match="no PNG/JPEG images found in this zip"):
        open_dataset(tmp_path / "x.zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match="not a readable zip"):
        open_dataset(tmp_path / "bad.zip")


def test_error_mixed_sizes_and_channels(tmp_path):
    _write_png(tmp_path / "size" / "a.png", _random_uint8(1, 3, 8)[0])
    _write_png(tmp_path / "size" / "b.png", _random_uint8(1, 3, 16)[0])
    with pytest.raises(DatasetError, match=r"b\.png is 16x16x3"):
        open_dataset(tmp_path / "size")
    _write_png(tmp_path / "chan" / "a.png", _random_uint8(1, 3, 8)[0])
    _write_png(tmp_path / "chan" / "b.png", _random_uint8(1, 1, 8)[0])
    with pytest.raises(DatasetError, match=r"b\.png is 8x8x1"):
        open_dataset(tmp_path / "chan")
    _write_png(tmp_path / "rect" / "a.png", np.zeros((3, 8, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"a\.png is 4x8; images must be square"):
        open_dataset(tmp_path / "rect")
    PIL.Image.new("RGBA", (8, 8)).save(tmp_path / "rgba.png")
    (tmp_path / "alpha").mkdir()
    (tmp_path / "rgba.png").rename(tmp_path / "alpha" / "rgba.png")
    with pytest.raises(DatasetError, match=r"rgba\.png has unsupported mode 'RGBA'"):
        open_dataset(tmp_path / "alpha")


def test_error_corrupted_png(tmp_path):
    for i in range(2):
        _write_png(tmp_path / f"{i}.png", _random_uint8(1, 3, 8, seed=i)[0])
    (tmp_path / "2.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"cannot read image 2\.png"):
        open_dataset(tmp_path)
    data = (tmp_path / "1.png").read_bytes()
    (tmp_path / "2.png").write_bytes(data[: len(data) // 2])  # header intact, pixel data truncated
    ds = open_dataset(tmp_path)
    ds[0]
    with pytest.raises(DatasetError, match=r"cannot decode image 2\.png"):
        ds[2]


def test_error_bad_labels(tmp_path):
    _write_png(tmp_path / "a.png", _random_uint8(1, 3, 8)[0])
    _write_png(tmp_path / "b.png", _random_uint8(1, 3, 8)[0])
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a.png", 1]]}))
    with pytest.raises(DatasetError, match=r"no label for image b\.png"):
        open_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a.png", 1], ["b.png", [0.5, 0.5]]]}))
    with pytest.raises(DatasetError, match="integer class labels"):
        open_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not inside a subfolder"):
        open_dataset(tmp_path, labels="subfolders")


def test_grid_matches_torchvision_layout():
    from torchvision.utils import make_grid

    from rfpp.images import make_grid_uint8

    u = torch.from_numpy(_random_uint8(7, 3, 5))
    for nrow, padding in [(3, 2), (8, 0), (1, 1)]:
        assert torch.equal(make_grid_uint8(u, nrow=nrow, padding=padding), make_grid(u, nrow=nrow, padding=padding))


def test_palette_png_reads_as_rgb(tmp_path):
    _write_png(tmp_path / "a.png", _random_uint8(1, 3, 4)[0])
    pal = PIL.Image.new("P", (4, 4), color=1)
    pal.putpalette([0, 0, 0, 10, 20, 30])
    pal.save(tmp_path / "b.png")
    ds = open_dataset(tmp_path)
    assert ds.channels == 3 and ds.load_uint8(1)[:, 0, 0].tolist() == [10, 20, 30]
