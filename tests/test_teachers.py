"""Teachers: the registry, safe loading of EDM-format snapshots, plain state-dict teachers."""

from __future__ import annotations

import builtins
import dataclasses
import io
import os
import pickle
import sys
import types
import uuid

import numpy as np
import pytest
import torch
from conftest import load_golden, rel_err
from edm_snapshot_writer import (
    PersistentPlain,
    precond_stand_in,
    randomize_,
    snapshot_bytes,
    write_snapshot,
)
from local_http_server import LocalFileServer

from rfpp.nets import EDMDenoiser, EDMVelocity, build_network
from rfpp.teachers import (
    FID_REFS,
    TEACHERS,
    TeacherLoadError,
    UnsafePickleError,
    VEDenoiser,
    VPDenoiser,
    load_edm_snapshot,
    load_state_dict_teacher,
)
from rfpp.teachers.safe_pickle import SafeUnpickler

DDPMPP_8 = dict(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1, 2],
                num_blocks=1, attn_resolutions=[4], dropout=0.13)
NCSNPP_8 = dict(DDPMPP_8, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                resample_filter=[1, 3, 3, 1])
ADM_8_COND = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=3, model_channels=64,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)



@pytest.fixture
def sentinel(tmp_path):
    """A path that executing the snapshot's embedded module source would create."""
    path = tmp_path / f"module_src_ran_{uuid.uuid4().hex}"
    yield path
    assert not path.exists(), "the snapshot's module_src was executed"


def _net(arch: str, config: dict, seed: int = 0):
    return randomize_(build_network(arch, **config), seed=seed).eval()


def _inputs(label_dim: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.01, 1.3, 60.0][:n])
    labels = torch.tensor([0, 2, 1][:n]) if label_dim else None
    return x, sigma, labels


def test_registry_names_and_urls():
    expected = {
        "cifar10-uncond-ve": "edm-cifar10-32x32-uncond-ve.pkl",
        "afhqv2-64-uncond-ve": "edm-afhqv2-64x64-uncond-ve.pkl",
        "ffhq-64-uncond-ve": "edm-ffhq-64x64-uncond-ve.pkl",
        "imagenet-64-cond-adm": "edm-imagenet-64x64-cond-adm.pkl",
        "cifar10-uncond-vp": "edm-cifar10-32x32-uncond-vp.pkl",
        "afhqv2-64-uncond-vp": "edm-afhqv2-64x64-uncond-vp.pkl",
        "ffhq-64-uncond-vp": "edm-ffhq-64x64-uncond-vp.pkl",
    }
    for name, filename in expected.items():
        spec = TEACHERS[name]
        assert spec.url == "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/" + filename
        assert spec.precond == "EDMPrecond" and spec.fid_ref in FID_REFS
    assert TEACHERS["imagenet-64-cond-adm"].conditional and TEACHERS["cifar10-uncond-ve"].arch == "ncsnpp"
    assert {k: v.url for k, v in FID_REFS.items()} == {
        n: f"https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/{n}.npz"
        for n in ("cifar10-32x32", "afhqv2-64x64", "ffhq-64x64", "imagenet-64x64")}


class _RecordingUnpickler(SafeUnpickler):
    def __init__(self, f):
        super().__init__(f)
        self.globals: set[str] = set()

    def find_class(self, module, name):
        self.globals.add(f"{module}.{name}")
        return super().find_class(module, name)


def test_writer_emits_edm_globals(sentinel):
    data = snapshot_bytes(precond_stand_in(_net("SongUNet", DDPMPP_8)), sentinel)
    unpickler = _RecordingUnpickler(io.BytesIO(data))
    records = unpickler.load()
    assert unpickler.globals == {
        "torch_utils.persistence._reconstruct_persistent_obj", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_tensor_v2", "torch.storage._load_from_bytes", "collections.OrderedDict",
        "torch.nn.modules.container.ModuleDict", "numpy.dtype", "numpy._core.multiarray.scalar"}
    ema = records["ema"]
    assert ema.class_name == "EDMPrecond" and ema.version == 6 and "class EDMPrecond" in ema.module_src
    assert ema.state["_init_kwargs"]["model_type"] == "SongUNet"
    block = ema.state["_modules"]["model"].state["_modules"]["enc"].state["_modules"]["8x8_block0"]
    assert block.class_name == "UNetBlock" and isinstance(block.state["skip_scale"], np.float64)
    assert records["loss_fn"].class_name == "EDMLoss"


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_songunet_ddpmpp_snapshot_roundtrip(tmp_path, sentinel, protocol):
    net = _net("SongUNet", DDPMPP_8)
    path = write_snapshot(tmp_path / "snap.pkl", precond_stand_in(net), sentinel, protocol=protocol)
    teacher = load_edm_snapshot(path, progress=False)
    assert type(teacher) is EDMDenoiser and not teacher.training
    assert teacher.sigma_data == 0.5 and teacher.snapshot_info["precond"] == "EDMPrecond"
    assert teacher.snapshot_info["network"]["model_type"] == "SongUNet"
    x, sigma, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma), EDMDenoiser(net)(x, sigma))
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert not (tmp_path / "snap.pkl.sha256").exists()  # a user's file: its checksum record is in rfpp's cache


def test_dhariwal_conditional_snapshot_roundtrip(tmp_path, sentinel):
    net = _net("DhariwalUNet", ADM_8_COND, seed=3)
    stand_in = precond_stand_in(net, use_fp16=True, sigma_data=0.5)
    path = write_snapshot(tmp_path / "adm.pkl", stand_in, sentinel)
    teacher = load_edm_snapshot(str(path), progress=False)
    assert teacher.label_dim == 3 and teacher.snapshot_info["use_fp16"] is True
    x, sigma, labels = _inputs(label_dim=3)
    ref = EDMDenoiser(net)
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma, labels), ref(x, sigma, labels))
        one_hot = torch.nn.functional.one_hot(labels, 3).float()
        assert torch.equal(teacher(x, sigma, one_hot), ref(x, sigma, labels))


def test_snapshot_matches_golden_reference_velocity(tmp_path, sentinel):
    """A snapshot written from the reference's golden weights gives the reference's velocity."""
    golden, teacher_ref = load_golden("songunet_ddpmpp_cond"), load_golden("songunet_ddpmpp_cond_teacher")
    net = build_network(golden["arch"], **golden["config"])
    net.load_state_dict(golden["state_dict"])
    path = write_snapshot(tmp_path / "golden.pkl", precond_stand_in(net), sentinel)
    velocity = EDMVelocity(load_edm_snapshot(path, progress=False))
    v = teacher_ref["velocity"]
    with torch.no_grad():
        assert rel_err(velocity(v["x_t"], v["t"], v["class_labels"]), v["v"]) < 1e-4


def test_vp_and_ve_preconditioned_snapshots(tmp_path, sentinel):
    x, sigma, _ = _inputs()
    s = sigma.reshape(-1, 1, 1, 1)

    net = _net("SongUNet", DDPMPP_8, seed=5)
    teacher = load_edm_snapshot(write_snapshot(tmp_path / "vp.pkl", precond_stand_in(net, "VPPrecond", beta_d=19.9,
                                                                                       beta_min=0.1, M=1000),
                                               sentinel), progress=False)
    assert isinstance(teacher, VPDenoiser)
    t_vp = ((0.1**2 + 2 * 19.9 * (1 + sigma**2).log()).sqrt() - 0.1) / 19.9
    with torch.no_grad():
        ref = x - s * net(x / (s**2 + 1).sqrt(), 999 * t_vp)
        torch.testing.assert_close(teacher(x, sigma), ref, rtol=1e-5, atol=1e-5)

    net = _net("SongUNet", NCSNPP_8, seed=6)
    teacher = load_edm_snapshot(write_snapshot(tmp_path / "ve.pkl", precond_stand_in(net, "VEPrecond"), sentinel),
                                progress=False)
    assert isinstance(teacher, VEDenoiser)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, sigma), x + s * net(x, (0.5 * sigma).log()), rtol=1e-5, atol=1e-5)
        # The velocity form works on top of any of them.
        assert torch.isfinite(EDMVelocity(teacher)(x, torch.tensor(0.5))).all()


def test_snapshot_without_recorded_init_args_and_with_easydict(tmp_path, sentinel, monkeypatch):
    """EDM's `_record_init_args = False` (the model's own kwargs are used) and dnnlib.util.EasyDict values."""

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    fake = types.ModuleType("dnnlib.util")
    fake.EasyDict = EasyDict
    monkeypatch.setitem(sys.modules, "dnnlib", types.ModuleType("dnnlib"))
    monkeypatch.setitem(sys.modules, "dnnlib.util", fake)
    net = _net("SongUNet", NCSNPP_8, seed=7)
    stand_in = precond_stand_in(net)
    stand_in.edm_init_kwargs = None
    extra = {"dataset_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", xflip=True)}
    path = write_snapshot(tmp_path / "s.pkl", stand_in, sentinel, extra=extra)
    monkeypatch.delitem(sys.modules, "dnnlib.util")
    monkeypatch.delitem(sys.modules, "dnnlib")
    teacher = load_edm_snapshot(path, progress=False)
    assert teacher.snapshot_info["network"]["embedding_type"] == "fourier"
    x, sigma, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma), EDMDenoiser(net)(x, sigma))
    assert "dnnlib" not in sys.modules


def test_unsupported_precond_and_missing_entry(tmp_path, sentinel):
    net = _net("SongUNet", DDPMPP_8)
    path = write_snapshot(tmp_path / "iddpm.pkl", precond_stand_in(net, "iDDPMPrecond"), sentinel)
    with pytest.raises(TeacherLoadError, match="iDDPMPrecond.*supported preconditionings are EDMPrecond"):
        load_edm_snapshot(path, progress=False)
    with pytest.raises(TeacherLoadError, match="no 'net' entry"):
        load_edm_snapshot(write_snapshot(tmp_path / "x.pkl", precond_stand_in(net), sentinel), key="net",
                          progress=False)


def test_truncated_snapshot_is_a_clear_error(tmp_path, sentinel):
    data = snapshot_bytes(precond_stand_in(_net("SongUNet", DDPMPP_8)), sentinel)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherLoadError, match="truncated or not an EDM snapshot.*download it again"):
        load_edm_snapshot(path, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_edm_snapshot(tmp_path / "missing.pkl", progress=False)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _pwned_path() -> str:
    return f"/tmp/pwned_{uuid.uuid4().hex}"


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "nested", "inner_storage"])
def test_malicious_pickles_are_refused(tmp_path, sentinel, attack):
    target = _pwned_path()
    command = f"touch {target}"
    if attack == "os.system":
        data = pickle.dumps({"ema": _Evil(os.system, command)})
    elif attack == "builtins.eval":
        data = pickle.dumps(_Evil(builtins.eval, f"__import__('os').system({command!r})"))
    elif attack == "nested":  # a valid snapshot with one poisoned entry, after the network
        data = snapshot_bytes(precond_stand_in(_net("SongUNet", DDPMPP_8)), sentinel,
                              extra={"dataset_kwargs": {"path": _Evil(os.system, command)}})
    else:  # a poisoned "storage" payload handed to torch.storage._load_from_bytes
        data = pickle.dumps({"ema": _Evil(torch.storage._load_from_bytes, pickle.dumps(_Evil(os.system, command)))})
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match="Nothing from the file was executed") as info:
        load_edm_snapshot(path, progress=False)
    assert not os.path.exists(target), "the malicious pickle ran its payload"
    if attack != "inner_storage":
        name = "builtins.eval" if attack == "builtins.eval" else f"{os.system.__module__}.system"  # posix.system
        assert f"the global '{name}'" in str(info.value)


def test_snapshot_over_http_and_by_registry_name(tmp_path, sentinel, monkeypatch):
    net = _net("SongUNet", NCSNPP_8, seed=2)
    data = snapshot_bytes(precond_stand_in(net), sentinel)
    x, sigma, _ = _inputs()
    with LocalFileServer({"/edm/pretrained/edm-cifar10-32x32-uncond-ve.pkl": data}) as srv:
        url = srv.url("/edm/pretrained/edm-cifar10-32x32-uncond-ve.pkl")
        teacher = load_edm_snapshot(url, dest_dir=tmp_path / "res", progress=False)
        assert (tmp_path / "res" / "edm-cifar10-32x32-uncond-ve.pkl").read_bytes() == data
        with torch.no_grad():
            assert torch.equal(teacher(x, sigma), EDMDenoiser(net)(x, sigma))

        spec = dataclasses.replace(TEACHERS["cifar10-uncond-ve"], base_url=srv.url("/edm/pretrained/"))
        monkeypatch.setitem(TEACHERS, "cifar10-uncond-ve", spec)
        teacher = load_edm_snapshot("cifar10-uncond-ve", dest_dir=tmp_path / "byname", progress=False)
        with torch.no_grad():
            assert torch.equal(teacher(x, sigma), EDMDenoiser(net)(x, sigma))
        assert len(srv.state.requests) == 2
        load_edm_snapshot(url, dest_dir=tmp_path / "res", progress=False)  # cached: no new request
        assert len(srv.state.requests) == 2


def test_state_dict_teacher(tmp_path):
    net = _net("DhariwalUNet", ADM_8_COND, seed=4)
    path = tmp_path / "converted.pt"
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, path)
    x, sigma, labels = _inputs(label_dim=3)
    ref = EDMDenoiser(net)

    teacher = load_state_dict_teacher(path, "DhariwalUNet", ADM_8_COND)
    precond_style = dict(img_resolution=8, img_channels=3, label_dim=3, sigma_data=0.5, use_fp16=True,
                         **{k: v for k, v in ADM_8_COND.items() if k not in ("img_resolution", "in_channels",
                                                                              "out_channels", "label_dim")})
    teacher2 = load_state_dict_teacher(path, "DhariwalUNet", precond_style)
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma, labels), ref(x, sigma, labels))
        assert torch.equal(teacher2(x, sigma, labels), ref(x, sigma, labels))

    with pytest.raises(TeacherLoadError, match="missing key.*unexpected key.*another architecture"):
        load_state_dict_teacher(path, "SongUNet", dict(DDPMPP_8, label_dim=3))
    with pytest.raises(TeacherLoadError, match=r"shape mismatch.*enc\.8x8_conv\.weight"):
        load_state_dict_teacher(path, "DhariwalUNet", dict(ADM_8_COND, model_channels=32))

    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(TeacherLoadError, match=f"file {cut} is truncated or not a checkpoint.*re-download"):
        load_state_dict_teacher(cut, "DhariwalUNet", ADM_8_COND)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict_teacher(tmp_path / "nope.pt", "DhariwalUNet", ADM_8_COND)
    with pytest.raises(TeacherLoadError, match="load_state_dict_teacher"):
        load_edm_snapshot(path, progress=False)


def test_state_dict_teacher_refuses_pickled_objects(tmp_path, sentinel):
    target = _pwned_path()
    path = tmp_path / "evil.pt"
    torch.save({"model.x": _Evil(os.system, f"touch {target}")}, path)
    with pytest.raises(TeacherLoadError, match="objects other than tensors"):
        load_state_dict_teacher(path, "SongUNet", DDPMPP_8)
    assert not os.path.exists(target)
    snap = write_snapshot(tmp_path / "snap.pkl", PersistentPlain("EDMLoss", {}), sentinel)
    with pytest.raises(TeacherLoadError):
        load_state_dict_teacher(snap, "SongUNet", DDPMPP_8)
