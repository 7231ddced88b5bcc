"""The EDM-compatible networks and the velocity form reproduce the reference implementation."""

from __future__ import annotations

import pytest
import torch
from conftest import NETWORK_CASES, load_golden, rel_err

from rfpp.nets import EDMDenoiser, EDMVelocity, build_network


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_state_dict_keys_and_shapes_match_edm(name):
    ref = load_golden(name)
    net = build_network(ref["arch"], **ref["config"])
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref["state_dict"].items()}
    assert ours == theirs


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_raw_network_matches_reference_float64(golden_nets, name):
    net, ref = golden_nets[name]
    with torch.no_grad():
        out = net(ref["x"], ref["noise_labels"], ref["class_labels"], ref["augment_labels"])
    assert out.dtype == torch.float64
    assert rel_err(out, ref["out"]) < 1e-6


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_velocity_matches_reference(golden_nets, name):
    net, _ = golden_nets[name]
    ref = load_golden(f"{name}_teacher")["velocity"]
    velocity = EDMVelocity(EDMDenoiser(net, sigma_data=0.5))
    with torch.no_grad():
        v = velocity(ref["x_t"], ref["t"], ref["class_labels"])
    assert rel_err(v, ref["v"]) < 1e-4


def test_velocity_matches_float32_run(golden_nets):
    """In float32 (how training runs) the velocity still agrees with the reference to 1e-4."""
    net, _ = golden_nets["songunet_ddpmpp_cond"]
    ref = load_golden("songunet_ddpmpp_cond_teacher")["velocity"]
    net32 = build_network("SongUNet", **load_golden("songunet_ddpmpp_cond")["config"]).eval()
    net32.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    with torch.no_grad():
        v = EDMVelocity(EDMDenoiser(net32))(ref["x_t"].float(), ref["t"].float(), ref["class_labels"].float())
    assert v.dtype == torch.float32
    assert rel_err(v, ref["v"]) < 1e-4


def test_velocity_is_consistent_with_denoiser(golden_nets):
    """x̂ = x_t − t·v equals D(x_t/(1−t), t/(1−t)) (docs/conventions.md, "EDM teachers in RF time")."""
    net, ref = golden_nets["songunet_ncsnpp"]
    den = EDMDenoiser(net)
    x_t = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        v = EDMVelocity(den)(x_t, t)
        d = den(x_t / (1 - t).view(-1, 1, 1, 1), t / (1 - t))
    assert torch.allclose(x_t - t.view(-1, 1, 1, 1) * v, d, rtol=1e-10, atol=1e-10)


def test_integer_class_labels_equal_one_hot(golden_nets):
    net, ref = golden_nets["dhariwalunet_cond"]
    den = EDMDenoiser(net)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        a = den(x, 1.5, labels)
        b = den(x, 1.5, torch.nn.functional.one_hot(labels, 10).double())
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        den(x, 1.5, torch.tensor([3, 12]))


def test_bf16_network_keeps_float32_outside(golden_nets):
    net, _ = golden_nets["songunet_ddpmpp_cond"]
    ref = load_golden("songunet_ddpmpp_cond_teacher")["velocity"]
    net_bf16 = build_network("SongUNet", **load_golden("songunet_ddpmpp_cond")["config"]).eval()
    net_bf16.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    velocity = EDMVelocity(EDMDenoiser(net_bf16, net_dtype=torch.bfloat16))
    with torch.no_grad():
        v = velocity(ref["x_t"].float(), ref["t"].float(), ref["class_labels"].float())
    assert v.dtype == torch.float32
    err = rel_err(v, ref["v"])
    assert 1e-5 < err < 5e-2  # bf16 differs from float32, but only by rounding


def test_conditional_network_requires_labels():
    net = build_network("SongUNet", img_resolution=8, in_channels=1, out_channels=1, label_dim=3,
                        model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    with pytest.raises(ValueError, match="class-conditional"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2))


def test_unknown_arch_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("ResNet", img_resolution=8)
    with pytest.raises(ValueError, match="embedding_type"):
        build_network("SongUNet", img_resolution=8, in_channels=1, out_channels=1, embedding_type="sine")


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = build_network("SongUNet", img_resolution=8, in_channels=1, out_channels=1, model_channels=16,
                        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.5)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    net.eval()
    assert torch.equal(net(x, c), net(x, c))
    net.train()
    assert not torch.equal(net(x, c), net(x, c))


def test_label_dropout_zeroes_labels_in_training():
    torch.manual_seed(0)
    kw = dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=4, model_channels=16,
              channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    net = build_network("DhariwalUNet", label_dropout=1.0, **kw)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    labels = torch.eye(4)[:2]
    net.train()
    dropped = net(x, c, labels)
    assert torch.allclose(dropped, net(x, c, torch.zeros_like(labels)))
    net.eval()
    assert not torch.allclose(net(x, c, labels), dropped)


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_a_network_built_for_a_state_is_the_reference_network_and_draws_no_random_numbers(name):
    """network_with_state (how every model file and training start is read) gives the reference's outputs, takes the
    state's tensors and leaves the global RNG where it was (no initialisation is drawn to be overwritten)."""
    from rfpp.checkpoints import network_with_state

    ref = load_golden(name)
    state = {k: v.clone() for k, v in ref["state_dict"].items()}
    torch.manual_seed(123)
    before = torch.get_rng_state()
    net = network_with_state(ref["arch"], ref["config"], state, name).double()
    assert torch.equal(torch.get_rng_state(), before)
    with torch.no_grad():
        out = net(ref["x"], ref["noise_labels"], ref["class_labels"], ref["augment_labels"])
    assert rel_err(out, ref["out"]) < 1e-6
    torch.manual_seed(123)
    drawn = build_network(ref["arch"], **ref["config"])  # a network built to train from scratch draws its init
    assert not torch.equal(torch.get_rng_state(), before)
    assert not all(torch.equal(drawn.state_dict()[k], v) for k, v in state.items())


def test_reading_a_model_file_imports_no_compiler(tmp_path):
    """A stage that only reads a model (pairs, sample) does not import torch._dynamo (1.2 s of CPU per process);
    building networks on the meta device did, through the Python decompositions of its arithmetic."""
    import subprocess
    import sys

    from rfpp.checkpoints import save_model

    path = save_model(tmp_path / "m.pt", build_network("SongUNet", img_resolution=8, in_channels=1, out_channels=1,
                                                       model_channels=8, channel_mult=[1], attn_resolutions=[],
                                                       num_blocks=1))
    code = ("import sys; from rfpp.checkpoints import load_model; from rfpp.eval.errors import FIDError; "
            f"load_model({str(path)!r}); print(sorted(m for m in ('torch._dynamo', 'torchvision', 'torch_fidelity') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
