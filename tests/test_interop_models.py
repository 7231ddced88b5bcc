"""The paper's model formats in and out (rfpp.interop, `rfpp import model`, `rfpp export model`, `rfpp sample
--checkpoint FOREIGN --net-config JSON`).

The files are written here in exactly the paper's formats: `torch.save` of EDMPrecondVel's state dict (keys
`model.…`), training states {'model_state_dict', 'optimizer_state_dict', 'iter'}, the configuration JSON with its
extra keys `unet_type` and `num_params`, EDM pickles (tests/edm_snapshot_writer.py). The velocity is checked
against `paper_velocity`, an independent float64 transcription of EDMPrecondVel's formula, and against the golden
velocities of the paper's code (tests/golden).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_golden, rel_err
from edm_snapshot_writer import precond_stand_in, randomize_, write_snapshot
from torch import nn
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import NET, make_world, tiny_teacher  # noqa: E402

from rfpp.checkpoints import load_model, save_model  # noqa: E402
from rfpp.interop import (  # noqa: E402
    NetConfigError,
    ReferenceFormatError,
    export_model,
    import_model,
    load_network,
)
from rfpp.nets import DhariwalUNet, SongUNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("unet_type", "num_params", "use_fp16")
UNET = {"SongUNet": "songunet", "DhariwalUNet": "adm"}


# ---- the paper's formats, written the way its code writes them -----------------------------------------------------


class PaperWrapper(nn.Module):
    """Stands for the paper's EDMPrecondVel/EDMPrecond for state-dict purposes: the network under `.model`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def network_from_paper_json(config: dict) -> nn.Module:
    """What the paper's generate.py does: pick the class by unet_type, pass the JSON's arguments (rfpp's networks
    have EDM's constructor; the paper's absorb the extra keys with **kwargs)."""
    cls = {"songunet": SongUNet, "adm": DhariwalUNet}[config["unet_type"]]
    return cls(**{k: v for k, v in config.items() if k not in EXTRA})


def write_paper_checkpoint(tmp: Path, net: nn.Module, stem: str, label: str = "songunet") -> tuple[Path, Path]:
    """`<stem>.pth` (EDMPrecondVel's state dict, float32) and `<stem>.json` (configs_unet style)."""
    state = {k: v.float() for k, v in PaperWrapper(net).state_dict().items()}
    assert all(k.startswith("model.") for k in state)
    torch.save(state, tmp / f"{stem}.pth")
    params = sum(p.numel() for p in net.parameters()) / 1e6
    config = {"unet_type": label, **net.config, "num_params": params}
    (tmp / f"{stem}.json").write_text(json.dumps(config, indent=4))
    return tmp / f"{stem}.pth", tmp / f"{stem}.json"


def paper_velocity(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                   augment_dim: int) -> torch.Tensor:
    """EDMPrecondVel in float64: x = x_t/(1−t), σ = t/(1−t), EDM's preconditioning with σ_data = 0.5 and zero
    augmentation labels, v = (x_t − D)/t."""
    x_t, t = x_t.double(), t.double().reshape(-1, 1, 1, 1)
    x, sigma, sd = x_t / (1 - t), t / (1 - t), 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sd**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    augment = torch.zeros(x.shape[0], augment_dim, dtype=torch.float64) if augment_dim else None
    out = net(c_in * x, c_noise.flatten(), None if labels is None else labels.double(), augment)
    return (x_t - (c_skip * x + c_out * out)) / t


def golden_network(name: str) -> tuple[nn.Module, dict]:
    ref = load_golden(name)
    net = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}[ref["arch"]](**ref["config"])
    net.load_state_dict({k: v.float() for k, v in ref["state_dict"].items()}, strict=True)  # a float32 release
    return net.eval(), ref


# ---- import --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["songunet_ncsnpp", "dhariwalunet_cond"])
def test_released_checkpoint_gives_the_papers_velocity(tmp_path, name):
    net, ref = golden_network(name)
    pth, cfg = write_paper_checkpoint(tmp_path, net, "cifar10-configF", UNET[ref["arch"]])
    out = import_model(pth, tmp_path / "imported.pt", cfg)
    velocity, info = load_model(out)
    assert info["arch"] == ref["arch"] and info["meta"]["imported_from"] == "reference-state-dict"
    gold = load_golden(f"{name}_teacher")["velocity"]
    x_t, t, labels = gold["x_t"], gold["t"], gold["class_labels"]
    with torch.no_grad():
        ours = velocity.double()(x_t.double(), t.double(), labels)
        theirs = paper_velocity(net.double(), x_t, t, labels, net.config["augment_dim"])
    assert rel_err(ours, theirs) < 1e-6  # the same formula in float64
    assert rel_err(ours, gold["v"]) < 1e-4  # the paper's own run (network in float32)


def test_training_state_and_teacher_file_import(tmp_path):
    net = randomize_(tiny_teacher(), seed=1)
    wrapper = {k: v.float() for k, v in PaperWrapper(net).state_dict().items()}
    optimizer = {"state": {0: {"exp_avg": torch.ones(3), "ema": torch.zeros(3)}}, "param_groups": [{"lr": 2e-4}]}
    torch.save({"model_state_dict": wrapper, "optimizer_state_dict": optimizer, "iter": 1234},
               tmp_path / "training_state_1234.pth")
    _, cfg = write_paper_checkpoint(tmp_path, net, "edm_cifar_ve_uncond")
    out = import_model(tmp_path / "training_state_1234.pth", tmp_path / "state.pt", cfg)
    velocity, info = load_model(out)
    assert info["meta"]["step"] == 1234 and info["meta"]["imported_from"] == "training-state"
    for key, value in net.state_dict().items():
        assert torch.equal(velocity.net.state_dict()[key], value.float()), key
    # the teacher .pth has the same form (EDMPrecond's state dict): it imports the same weights
    teacher = import_model(tmp_path / "edm_cifar_ve_uncond.pth", tmp_path / "teacher.pt", cfg)
    assert load_model(teacher)[1]["tensors_sha256"] == info["tensors_sha256"]


def test_edm_pickle_imports_without_config_and_without_running_code(tmp_path):
    net = randomize_(SongUNet(**NET), seed=2)
    sentinel = tmp_path / "executed"
    pkl = write_snapshot(tmp_path / "edm-tiny.pkl", precond_stand_in(net), sentinel)
    out = import_model(pkl, tmp_path / "edm.pt")
    assert not sentinel.exists()
    velocity, info = load_model(out)
    assert info["meta"]["imported_from"] == "edm-pickle"
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert rel_err(velocity.double()(x, t), paper_velocity(net.double().eval(), x, t, None, 0)) < 1e-6


def test_keys_and_architecture_that_do_not_fit_are_named(tmp_path):
    net = tiny_teacher()
    pth, cfg = write_paper_checkpoint(tmp_path, net, "flow_model_100_ema")
    config = json.loads(cfg.read_text())
    (tmp_path / "more_blocks.json").write_text(json.dumps({**config, "num_blocks": 2}))
    with pytest.raises(ReferenceFormatError, match=r"missing key\(s\): enc\.8x8_block1\."):
        import_model(pth, tmp_path / "x.pt", tmp_path / "more_blocks.json")
    (tmp_path / "wider.json").write_text(json.dumps({**config, "model_channels": 32}))
    with pytest.raises(ReferenceFormatError, match=r"shape mismatch.*: map_layer0\.weight"):
        import_model(pth, tmp_path / "x.pt", tmp_path / "wider.json")
    (tmp_path / "adm.json").write_text(json.dumps({**config, "unet_type": "adm"}))
    with pytest.raises(NetConfigError, match="embedding_type.*not its constructor arguments"):
        import_model(pth, tmp_path / "x.pt", tmp_path / "adm.json")
    (tmp_path / "dit.json").write_text(json.dumps({**config, "unet_type": "dit"}))
    with pytest.raises(NetConfigError, match="unet_type 'dit'"):
        import_model(pth, tmp_path / "x.pt", tmp_path / "dit.json")
    with pytest.raises(NetConfigError, match="carries no network configuration"):
        import_model(pth, tmp_path / "x.pt")
    torch.save({k[len("model."):]: v for k, v in torch.load(pth).items()}, tmp_path / "bare.pth")
    with pytest.raises(ReferenceFormatError, match="do not start with 'model.'"):
        import_model(tmp_path / "bare.pth", tmp_path / "x.pt", cfg)
    assert not (tmp_path / "x.pt").exists()


def test_cli_import_export_exit_codes(tmp_path):
    from cli.main import app

    net = tiny_teacher()
    pth, cfg = write_paper_checkpoint(tmp_path, net, "flow_model_100_ema")
    runner = CliRunner()
    res = runner.invoke(app, ["import", "model", str(pth), "--config", str(cfg), "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 0, res.output
    (tmp_path / "dit.json").write_text(json.dumps({**json.loads(cfg.read_text()), "unet_type": "dit"}))
    res = runner.invoke(app, ["import", "model", str(pth), "--config", str(tmp_path / "dit.json"), "-o",
                              str(tmp_path / "y.pt")])
    assert res.exit_code == 2 and "unet_type 'dit'" in res.output
    (tmp_path / "wide.json").write_text(json.dumps({**json.loads(cfg.read_text()), "model_channels": 32}))
    res = runner.invoke(app, ["import", "model", str(pth), "--config", str(tmp_path / "wide.json"), "-o",
                              str(tmp_path / "y.pt")])
    assert res.exit_code == 1 and "shape mismatch" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["export", "model", str(tmp_path / "m.pt"), "--format", "onnx", "-o", str(tmp_path / "z")])
    assert res.exit_code == 2 and "reference, safetensors" in res.output
    res = runner.invoke(app, ["export", "model", str(tmp_path / "m.pt"), "-o", str(tmp_path / "e.pth")])
    assert res.exit_code == 0 and (tmp_path / "e.json").exists()


# ---- export --------------------------------------------------------------------------------------------------------


def test_export_loads_strictly_into_the_papers_wrapper_and_gives_the_same_velocity(tmp_path):
    net = randomize_(DhariwalUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, model_channels=16,
                                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0), seed=3)
    model = save_model(tmp_path / "final.pt", net, meta={"weights": "ema"})
    written = export_model(model, tmp_path / "flow_model_final_ema.pth", "reference",
                           tmp_path / "config_flow_model.json")
    config = json.loads(written["config"].read_text())
    assert config["unet_type"] == "adm" and config["num_params"] == sum(p.numel() for p in net.parameters()) / 1e6
    state = torch.load(written["weights"], weights_only=True)
    assert all(k.startswith("model.") for k in state) and all(v.dtype == torch.float32 for v in state.values())
    wrapper = PaperWrapper(network_from_paper_json(config))
    wrapper.load_state_dict(state, strict=True)
    velocity, _ = load_model(model)
    x, t = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0.1, 0.5, 0.95])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 1]), 4).double()  # the paper's one-hot labels
    with torch.no_grad():
        theirs = paper_velocity(wrapper.model.double().eval(), x, t, labels, config["augment_dim"])
        assert rel_err(velocity.double()(x, t, labels), theirs) < 1e-6
    # and back: the exported pair imports to the same weights
    again = import_model(written["weights"], tmp_path / "again.pt", written["config"])
    assert load_model(again)[1]["tensors_sha256"] == load_model(model)[1]["tensors_sha256"]


def test_safetensors_export_carries_the_configuration(tmp_path):
    from safetensors import safe_open

    net = randomize_(tiny_teacher(), seed=4)
    model = save_model(tmp_path / "final.pt", net)
    written = export_model(model, tmp_path / "student.safetensors", "safetensors")
    with safe_open(str(written["weights"]), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no iterator
    config = json.loads(metadata["net_config"])
    assert metadata["arch"] == "SongUNet" and config["unet_type"] == "songunet"
    wrapper = PaperWrapper(network_from_paper_json(config))
    wrapper.load_state_dict(tensors, strict=True)
    assert metadata["source_tensors_sha256"] == load_model(model)[1]["tensors_sha256"]
    net_again, weights, _ = load_network(written["weights"])  # no --config: the metadata has it
    assert weights.kind == "safetensors"
    for key, value in net.state_dict().items():
        assert torch.equal(net_again.state_dict()[key], value), key


# ---- sample straight from a released checkpoint ------------------------------------------------------------------


def test_sample_from_paper_checkpoint_equals_sampling_its_import(tmp_path):
    profile = make_world(tmp_path, count=16)
    net = randomize_(tiny_teacher(seed=5), seed=5, std=0.05)
    pth, cfg = write_paper_checkpoint(tmp_path, net, "cifar10-configF")
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "RFPP_TRACKING": "off"}
    common = ["--profile", str(profile), "--nfe", "1", "--num-samples", "8", "--device", "cpu"]
    run = subprocess.run([sys.executable, "-m", "cli.main", "sample", *common, "--checkpoint", str(pth),
                          "--net-config", str(cfg), "--out", str(tmp_path / "paper.npz")],
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    imported = list((tmp_path / "results/tiny/imported").glob("*/cifar10-configF.pt"))
    assert len(imported) == 1
    native = save_model(tmp_path / "native.pt", net)
    from cli.main import app

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(app, ["sample", *common, "--checkpoint", str(native), "--out",
                                       str(tmp_path / "native.npz")])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    a, b = np.load(tmp_path / "paper.npz"), np.load(tmp_path / "native.npz")
    assert np.array_equal(a["images"], b["images"])
    meta = json.loads(str(a["meta"]))
    assert meta["checkpoint_tensors_sha256"] == json.loads(str(b["meta"]))["checkpoint_tensors_sha256"]
