"""Pair sets of the paper's generate_edm.py imported as rfpp pair sets (rfpp.interop.import_pairs,
`rfpp import pairs`): samples.zip of PNGs, z.zip of 32-byte big-endian PCG64 (state, increment) records,
images_labels.csv. The expected noise is drawn here with numpy's own generator (not with rfpp's code): a generator
records its state, then draws standard_normal((C, H, W)) in float64, cast to float32, as the paper's code does.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_world  # noqa: E402

from rfpp.checkpoints import load_model  # noqa: E402
from rfpp.interop import check_pair_source, import_pairs  # noqa: E402
from rfpp.pairs import PairDataset, PairSetError  # noqa: E402


def paper_pair_set(folder: Path, count: int, shape: tuple[int, int, int], subfolder: int = 0,
                   num_classes: int = 0, seed: int = 0) -> dict[str, dict]:
    """samples.zip, z.zip (entries written in reverse order) and, with classes, images_labels.csv in `folder`;
    returns {z.zip name: {"noise", "image" (uint8 C,H,W), "label"}}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected: dict[str, dict] = {}
    rows = []
    with zipfile.ZipFile(folder / "samples.zip", "w") as zs, zipfile.ZipFile(folder / "z.zip", "w") as zz:
        for i in reversed(range(count)):
            stem = f"{i // subfolder}/{i:05d}" if subfolder else f"{i:05d}"
            gen = np.random.default_rng(10_000 + i)
            state = gen.bit_generator.state["state"]
            zz.writestr(f"{stem}.bin", state["state"].to_bytes(16, "big") + state["inc"].to_bytes(16, "big"))
            noise = gen.standard_normal(shape).astype(np.float32)
            image = rng.integers(0, 256, size=shape, dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(image[0] if shape[0] == 1 else image.transpose(1, 2, 0)).save(buf, format="PNG")
            zs.writestr(f"{stem}.png", buf.getvalue())
            label = int(rng.integers(num_classes)) if num_classes else -1
            rows.append([f"{stem}.png", label])
            expected[f"{stem}.bin"] = {"noise": noise, "image": image, "label": label}
    if num_classes:
        with (folder / "images_labels.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return expected


def test_item_i_is_the_ith_sorted_name_with_its_pcg64_noise(tmp_path):
    expected = paper_pair_set(tmp_path / "paper", 7, (3, 4, 4), subfolder=3)
    manifest = import_pairs(tmp_path / "paper/samples.zip", tmp_path / "paper/z.zip", tmp_path / "pairs",
                            num_shards=2, log=lambda _: None)
    names = sorted(expected)
    assert (tmp_path / "pairs/names.txt").read_text().split() == names
    dataset = PairDataset(tmp_path / "pairs")
    assert len(dataset) == 7 and dataset.spec.shape == (3, 4, 4) and len(manifest["shards"]) == 2
    for i, name in enumerate(names):
        noise, image, label = dataset[i]
        assert noise.dtype == torch.float32 and np.array_equal(noise.numpy(), expected[name]["noise"]), name
        assert torch.equal(image, torch.from_numpy(expected[name]["image"]).float() / 127.5 - 1), name
        assert label == -1
    assert not list((tmp_path / "pairs").glob("*noise*"))  # the noise itself is never stored


def test_provenance_like_rfpps_own_pairs(tmp_path):
    paper_pair_set(tmp_path / "paper", 5, (1, 8, 8), num_classes=3)
    args = (tmp_path / "paper/samples.zip", tmp_path / "paper/z.zip")
    manifest = import_pairs(*args, tmp_path / "a", labels=tmp_path / "paper/images_labels.csv", label_dim=10,
                            log=lambda _: None)
    assert manifest["format"] == "rfpp.pairs" and manifest["fingerprint"]["stage"] == "pairs"
    assert manifest["noise"]["kind"] == "pcg64-states" and manifest["spec"]["label_dim"] == 10
    assert set(manifest["fingerprint"]["inputs"]) == {"images", "noise", "labels"}
    again = import_pairs(*args, tmp_path / "b", labels=tmp_path / "paper/images_labels.csv", label_dim=10,
                         log=lambda _: None)
    assert again["fingerprint"]["id"] == manifest["fingerprint"]["id"]
    assert check_pair_source(tmp_path / "a", shape=(1, 8, 8), label_dim=10)["fingerprint"] == manifest["fingerprint"]
    with pytest.raises(PairSetError, match="holds \\(1, 8, 8\\) images"):
        check_pair_source(tmp_path / "a", shape=(3, 8, 8))
    states = np.load(tmp_path / "a/shard-0.states.npy")
    states[2, 1] ^= np.uint64(1)
    np.save(tmp_path / "a/shard-0.states.npy", states)
    with pytest.raises(PairSetError, match="corrupted"):
        PairDataset(tmp_path / "a")
    with pytest.raises(PairSetError, match="not empty"):
        import_pairs(*args, tmp_path / "a", log=lambda _: None)


def test_class_labels_from_the_csv(tmp_path):
    expected = paper_pair_set(tmp_path / "paper", 6, (1, 4, 4), num_classes=4, seed=1)
    import_pairs(tmp_path / "paper/samples.zip", tmp_path / "paper/z.zip", tmp_path / "pairs",
                 labels=tmp_path / "paper/images_labels.csv", label_dim=4, log=lambda _: None)
    dataset = PairDataset(tmp_path / "pairs")
    assert [dataset[i][2] for i in range(6)] == [expected[n]["label"] for n in sorted(expected)]
    rows = (tmp_path / "paper/images_labels.csv").read_text().splitlines()
    (tmp_path / "paper/images_labels.csv").write_text("\n".join(rows[1:]) + "\n")
    with pytest.raises(PairSetError, match="no label for 1 image"):
        import_pairs(tmp_path / "paper/samples.zip", tmp_path / "paper/z.zip", tmp_path / "other",
                     labels=tmp_path / "paper/images_labels.csv", log=lambda _: None)


def test_entry_without_image_and_record_of_wrong_size(tmp_path):
    paper_pair_set(tmp_path / "paper", 3, (1, 4, 4))
    with zipfile.ZipFile(tmp_path / "paper/z.zip", "a") as zz:
        zz.writestr("00007.bin", bytes(32))
    runner = CliRunner()
    from cli.main import app

    res = runner.invoke(app, ["import", "pairs", "--images", str(tmp_path / "paper/samples.zip"), "--noise",
                              str(tmp_path / "paper/z.zip"), "--out", str(tmp_path / "pairs")])
    assert res.exit_code == 1 and "'00007.bin' has no image '00007.png'" in res.output
    with zipfile.ZipFile(tmp_path / "paper/samples.zip", "a") as zs:
        zs.writestr("00008.png", b"")
    with zipfile.ZipFile(tmp_path / "paper/z.zip", "a") as zz:
        zz.writestr("00008.bin", bytes(31))
    with pytest.raises(PairSetError, match="'00007.bin' has no image"):
        import_pairs(tmp_path / "paper/samples.zip", tmp_path / "paper/z.zip", tmp_path / "p", log=lambda _: None)
    with zipfile.ZipFile(tmp_path / "paper/samples.zip", "a") as zs:
        zs.writestr("00007.png", b"")
    res = runner.invoke(app, ["import", "pairs", "--images", str(tmp_path / "paper/samples.zip"), "--noise",
                              str(tmp_path / "paper/z.zip"), "--out", str(tmp_path / "pairs")])
    assert res.exit_code == 1 and "'00008.bin' holds 31 bytes, not a 32-byte PCG64 record" in res.output
    assert not (tmp_path / "pairs/manifest.json").exists()


def test_a_profile_with_pairs_source_trains_on_the_imported_set_and_makes_no_pairs(tmp_path):
    """pairs.source: PATH (an imported set outside results/): `rfpp train` reads it and records its fingerprint,
    the DAG has no pair stages (training's input is PATH/manifest.json), and `rfpp pairs` refuses in one line."""
    from workflow_helpers import dry_run_jobs, make_workspace

    profile = make_world(tmp_path, count=8)
    paper_pair_set(tmp_path / "paper", 16, (1, 8, 8), seed=2)
    from cli.main import app

    runner = CliRunner()
    pairs = tmp_path / "imported-pairs"
    res = runner.invoke(app, ["import", "pairs", "--images", str(tmp_path / "paper/samples.zip"), "--noise",
                              str(tmp_path / "paper/z.zip"), "--out", str(pairs), "--overwrite"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((pairs / "manifest.json").read_text())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = runner.invoke(app, ["train", "--profile", str(profile), "--arm", "baseline", "--no-progress",
                                  "train.steps=2", f"pairs.source={pairs}"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["pairs", "--profile", str(profile), f"pairs.source={pairs}"])
        assert res.exit_code == 2 and "takes its pairs from pairs.source" in res.output, res.output
    finally:
        os.chdir(cwd)
    _, info = load_model(tmp_path / "results/tiny/train/baseline/seed0/final.pt")
    assert info["meta"]["fingerprint"]["inputs"]["pairs"] == manifest["fingerprint"]["id"]

    values = yaml.safe_load(profile.read_text())
    values["pairs"]["source"] = str(pairs)
    work = make_workspace(tmp_path / "dag", {"tiny": values})
    jobs = dry_run_jobs("--config", "profile=tiny", cwd=work)
    assert not {"pairs", "pairs_shard"} & {j["rule"] for j in jobs}
    assert all(str(pairs / "manifest.json") in j["input"] for j in jobs if j["rule"] == "train"), jobs
