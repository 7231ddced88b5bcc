"""`rfpp report` from whatever the stages left: FID jsons, sample grids, training throughput and loss history."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfpp.config import load_config
from rfpp.images import save_grid
from rfpp.paths import ProfilePaths
from rfpp.report import ReportError, write_report


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("RFPP_TRACKING", "off")


def _fid(paths: ProfilePaths, arm: str, nfe: int, value: float, net: str = "digits-classifier",
         t_start: float | None = None) -> None:
    path = paths.fid(arm, nfe)
    path.parent.mkdir(parents=True, exist_ok=True)
    protocol = {"metric": "fid", "feature_net": net, "feature_layer": "pool", "feature_net_sha256": "ab" * 32,
                "reference": "dataset:digits@8", "reference_sha256": "cd" * 32, "num_samples": 1797,
                "torch_fidelity": "0.4.0"}
    path.write_text(json.dumps({"format": "rfpp.fid", "value": value, "protocol": protocol, "protocol_id": "p1",
                                "straightness": 0.01 * nfe, "sampling": {"nfe": nfe, "t_start": t_start}}))


def test_digits_report_table_plots_and_feature_net(tmp_path):
    config = load_config("digits")
    paths = ProfilePaths.of("digits", tmp_path)
    _fid(paths, "rfpp", 1, 12.5, t_start=config.sample.t_start)
    _fid(paths, "rfpp", 2, 8.25, t_start=0.95)
    save_grid(np.zeros((4, 1, 8, 8), np.uint8), paths.samples("rfpp", 2).with_suffix(".png"))
    train = paths.train_dir("rfpp")
    train.mkdir(parents=True)
    (train / "summary.json").write_text(json.dumps({"final": {"images_per_s": 321.0}}))
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 9)))
    written = write_report(config, paths)
    text = paths.report.read_text()
    assert "| rfpp | 1 | 12.5 | 0.01 | 321 |" in text
    assert "| rfpp | 2 | 8.25 | 0.02 | 321 |" in text
    assert "| baseline | 1 | — | — | — |" in text  # absent results are tolerated
    assert "digits-classifier features stand in for Inception" in text
    assert "The paper reports no numbers for the `digits` profile." in text
    assert f"the default grid from t₀ = {config.sample.t_start:g}" in text
    assert "another first grid point than sample.t_start: rfpp NFE 2 (t₀ = 0.95)" in text
    assert "rfpp NFE 1" not in text
    names = {p.name for p in written["plots"]}
    assert {"fid_vs_nfe.png", "loss_curves.png", "timestep_density.png", "samples_rfpp_nfe2.png"} <= names
    for p in written["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({p.relative_to(tmp_path / 'digits')})" in text


def test_cifar10_report_shows_the_papers_numbers_and_warns_on_mixed_protocols(tmp_path):
    config = load_config("cifar10")
    paths = ProfilePaths.of("cifar10", tmp_path)
    _fid(paths, "rfpp", 1, 3.9, net="inception")
    path = paths.fid("rfpp", 2)
    _fid(paths, "rfpp", 2, 3.1, net="inception")
    data = json.loads(path.read_text())
    data["protocol_id"] = "p2"
    path.write_text(json.dumps(data))
    write_report(config, paths)
    text = paths.report.read_text()
    assert "| rfpp | 1 | 3.9 |" in text and "3.38 (2-RF++, no real data)" in text
    assert "Inception-v3 features" in text and "stand in" not in text
    assert "ablation ladder" in text and "| 2-RF baseline | 12.21 |" in text
    assert "different protocols" in text
    assert "No training loss history" in text


def test_a_fid_of_samples_remade_since_is_stale(tmp_path):
    """A PNG-folder sample set has no file sha256: its FID records the samples' fingerprint, checked against the
    set's .json now on disk; a FID that recorded no samples (an older rfpp) is not judged."""
    config = load_config("digits")
    paths = ProfilePaths.of("digits", tmp_path)
    folder = paths.samples("rfpp", 2).with_suffix("")
    folder.mkdir(parents=True)
    side = folder.with_suffix(".json")
    side.write_text(json.dumps({"fingerprint": {"id": "a" * 64}}))
    _fid(paths, "rfpp", 1, 12.5)
    _fid(paths, "rfpp", 2, 8.25)
    data = json.loads(paths.fid("rfpp", 2).read_text())
    data["samples"] = {"path": str(folder), "sha256": None, "fingerprint": "a" * 64}
    paths.fid("rfpp", 2).write_text(json.dumps(data))
    assert write_report(config, paths)["stale"] == []
    side.write_text(json.dumps({"fingerprint": {"id": "b" * 64}}))
    stale = write_report(config, paths)["stale"]
    assert len(stale) == 1 and stale[0].startswith(f"the FID of rfpp NFE 2 is stale: {folder} was remade")
    assert stale[0].endswith(f"redo it with `rfpp fid --profile digits --arm rfpp --nfe 2 --samples {folder}`")
    text = paths.report.read_text()
    assert "| rfpp | 2 | 8.25 (stale) |" in text and "| rfpp | 1 | 12.5 |" in text


def test_no_results_is_an_error_naming_where_it_looked(tmp_path):
    paths = ProfilePaths.of("digits", tmp_path / "elsewhere")
    with pytest.raises(ReportError, match="rfpp sample") as err:
        write_report(load_config("digits"), paths)
    assert str((tmp_path / "elsewhere" / "digits").resolve()) in str(err.value)
    assert not paths.report.exists()
