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
         t_start: float | None = None, seed: int = 0) -> None:
    path = paths.fid(arm, seed, nfe)
    path.parent.mkdir(parents=True, exist_ok=True)
    protocol = {"metric": "fid", "feature_net": net, "feature_layer": "pool", "feature_net_sha256": "ab" * 32,
                "reference": "dataset:digits@8", "reference_sha256": "cd" * 32, "num_samples": 1797,
                "torch_fidelity": "0.4.0"}
    path.write_text(json.dumps({"format": "rfpp.fid", "value": value, "protocol": protocol, "protocol_id": "p1",
                                "straightness": 0.01 * nfe, "sampling": {"nfe": nfe, "t_start": t_start}}))


def test_digits_report_table_plots_and_feature_net(tmp_path):
    config = load_config("digits", ["train.seeds=[0]"])
    paths = ProfilePaths.of("digits", tmp_path)
    _fid(paths, "rfpp", 1, 12.5, t_start=config.sample.t_start)
    _fid(paths, "rfpp", 2, 8.25, t_start=0.95)
    save_grid(np.zeros((4, 1, 8, 8), np.uint8), paths.samples("rfpp", 0, 2).with_suffix(".png"))
    train = paths.train_dir("rfpp", 0)
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
    path = paths.fid("rfpp", 0, 2)
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
    folder = paths.samples("rfpp", 0, 2).with_suffix("")
    folder.mkdir(parents=True)
    side = folder.with_suffix(".json")
    side.write_text(json.dumps({"fingerprint": {"id": "a" * 64}}))
    _fid(paths, "rfpp", 1, 12.5)
    _fid(paths, "rfpp", 2, 8.25)
    data = json.loads(paths.fid("rfpp", 0, 2).read_text())
    data["samples"] = {"path": str(folder), "sha256": None, "fingerprint": "a" * 64}
    paths.fid("rfpp", 0, 2).write_text(json.dumps(data))
    assert write_report(config, paths)["stale"] == []
    side.write_text(json.dumps({"fingerprint": {"id": "b" * 64}}))
    stale = write_report(config, paths)["stale"]
    assert len(stale) == 1 and stale[0].startswith(f"the FID of rfpp seed 0 NFE 2 is stale: {folder} was remade")
    command = f"rfpp fid --profile digits --arm rfpp --train-seed 0 --nfe 2 --samples {folder}"
    assert stale[0].endswith(f"redo it with `{command}`")
    text = paths.report.read_text()
    assert "| rfpp | 2 | 8.25 (stale) |" in text and "| rfpp | 1 | 12.5 |" in text


def test_no_results_is_an_error_naming_where_it_looked(tmp_path):
    paths = ProfilePaths.of("digits", tmp_path / "elsewhere")
    with pytest.raises(ReportError, match="rfpp sample") as err:
        write_report(load_config("digits", ["train.seeds=[0]"]), paths)
    assert str((tmp_path / "elsewhere" / "digits").resolve()) in str(err.value)
    assert not paths.report.exists()


def test_seeds_give_mean_and_spread_and_the_compared_arms_their_paired_difference(tmp_path):
    """digits with three training seeds per arm; its report.compare [[rfpp, baseline]]. Each arm × NFE row holds
    the mean ± sample sd over the seeds and each seed's FID; the paired difference is taken within each seed (seed 2 of
    NFE 2 has no baseline FID: that NFE's difference is over seeds 0 and 1)."""
    config = load_config("digits", ["train.seeds=[0, 1, 2]"])
    assert config.report.compare == [("rfpp", "baseline")]
    paths = ProfilePaths.of("digits", tmp_path)
    fids = {("baseline", 1): [10.0, 11.0, 12.0], ("rfpp", 1): [9.0, 10.5, 10.0],
            ("baseline", 2): [5.0, 6.0, None], ("rfpp", 2): [5.5, 5.0, 4.0]}
    for (arm, nfe), values in fids.items():
        for seed, value in enumerate(values):
            if value is not None:
                _fid(paths, arm, nfe, value, seed=seed)
    written = write_report(config, paths)
    text = paths.report.read_text()
    assert "| baseline | 1 | 11 ± 1 | 10, 11, 12 |" in text  # mean ± sd (n − 1), then seeds 0, 1, 2
    assert "| rfpp | 2 | 4.833 ± 0.76 | 5.5, 5, 4 |" in text
    assert "| baseline | 2 | 5.5 ± 0.71 | 5, 6, — |" in text
    # rfpp − baseline: NFE 1 per seed −1, −0.5, −2 (mean −1.167, sd 0.764): the sign holds, beyond the spread
    assert "| rfpp − baseline | 1 | -1.167 ± 0.76 | 0: -1, 1: -0.5, 2: -2 | yes | yes | — | — |" in text
    # NFE 2: +0.5, −1 over seeds 0 and 1: the sign flips, |mean| 0.25 < sd 1.06
    assert "| rfpp − baseline | 2 | -0.25 ± 1.1 | 0: 0.5, 1: -1 | no | no | — | — |" in text
    nfe1 = next(c for c in written["comparisons"] if c["nfe"] == 1)
    assert nfe1["diff"]["n"] == 3 and abs(nfe1["diff"]["mean"] + 7 / 6) < 1e-12 and nfe1["sign_holds"]


def test_the_ladder_steps_stand_beside_the_papers(tmp_path):
    """digits-ladder: each rung against the one before; the paper's CIFAR-10 numbers stand beside the rungs, and
    each step says whether the miniature moves the way the paper's does (the paper's C → D gets worse)."""
    config = load_config("digits-ladder", ["train.seeds=[0, 1]"])
    paths = ProfilePaths.of("digits-ladder", tmp_path)
    rungs = {"A-2rf": 20.0, "B-teacher-init": 18.0, "C-u-shaped": 15.0, "D-pseudo-huber": 14.0,
             "E-lpips-huber": 16.0, "F-lpips-huber-1t": 15.5}
    for arm, value in rungs.items():
        for seed in (0, 1):
            _fid(paths, arm, 1, value + 0.5 * seed, seed=seed)
    text = write_report(config, paths) and paths.report.read_text()
    assert "| A-2rf | 1 | 20.25 ± 0.35 | 20, 20.5 |" in text and "12.21 (CIFAR-10 A: 2-RF)" in text
    assert "| B-teacher-init − A-2rf | 1 | -2 ± 0 | 0: -2, 1: -2 | yes | yes | -5.07 | yes |" in text
    assert "| D-pseudo-huber − C-u-shaped | 1 | -1 ± 0 | 0: -1, 1: -1 | yes | yes | 0.07 | no |" in text
    assert "| E-lpips-huber − D-pseudo-huber | 1 | 2 ± 0 | 0: 2, 1: 2 | yes | yes | -1.82 | no |" in text

