"""Shared fixtures: the reference implementation's golden vectors in tests/golden/; a TORCH_HOME holding
random-weight stand-ins for the downloaded VGG16 and Inception files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"  # what made these files and the tolerances: its README.md
NETWORK_CASES = ["songunet_ncsnpp", "songunet_ddpmpp_cond", "dhariwalunet_cond"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end runs (marked slow) first, the real profiles' DAGs (test_profile_smoke.PROFILES: the longest first)
    leading: with two workers (`make test`) the long runs start at once and the short tests fill in behind them,
    instead of a long run starting last and running alone (the suite takes as long as its busiest worker)."""
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is None:
            return 2
        return 0 if item.get_closest_marker("real_profile_dag") is not None else 1

    items.sort(key=rank)  # stable: file order within each rank


def load_golden(name: str) -> dict:
    path = GOLDEN_DIR / f"{name}.pt"
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: restore tests/golden/ from the repository's git history")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def golden_nets():
    """name -> (float64 network with the golden weights, in eval mode; the golden dict)."""
    from rfpp.nets import build_network

    out = {}
    for name in NETWORK_CASES:
        ref = load_golden(name)
        net = build_network(ref["arch"], **ref["config"]).double().eval()
        net.load_state_dict(ref["state_dict"], strict=True)
        out[name] = (net, ref)
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch, tmp_path_factory):
    """rfpp's cache (checksum records of local files) in a temporary folder, not the user's ~/.cache."""
    monkeypatch.setenv("RFPP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rfpp-cache"))


@pytest.fixture(autouse=True)
def _tracking_off_unless_asked(monkeypatch, request):
    """Unit tests do not write to the project's MLflow store; tracking tests opt back in by setting
    RFPP_TRACKING themselves (monkeypatch.setenv) or by the `tracking` marker."""
    if "tracking" not in request.keywords and "test_tracking" not in request.node.nodeid:
        monkeypatch.setenv("RFPP_TRACKING", "off")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tests run tiny networks: one thread is fastest there and does not oversubscribe the two cores when
    a test starts subprocesses (a test doing real work may raise it; the count is restored per module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One tiny teacher and pair set (tests/train_helpers.make_world) per test module; tests copy it before writing."""
    from train_helpers import make_world

    root = tmp_path_factory.mktemp("world")
    make_world(root)
    return root


@pytest.fixture(scope="session")
def offline_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds random-weight VGG16 (LPIPS trunk) and Inception (FID) files under the real
    file names (tests/weight_files.py): what an offline machine needs in place of the two downloads."""
    from weight_files import write_random_inception, write_random_vgg16

    home = tmp_path_factory.mktemp("offline_torch_home")
    write_random_vgg16(home)
    write_random_inception(home)
    return home
