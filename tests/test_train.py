"""`rfpp train`: data order, schedule, EMA, exact resume, resume vs teacher init, non-finite losses, every arm kind,
the CLI's exit codes. Tiny networks and pair sets made in tmp (tests/train_helpers.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import ONE_LEVEL_NET, load_state, make_world, tiny_teacher, world_config  # noqa: E402

from rfpp.checkpoints import file_sha256, load_model, save_model  # noqa: E402
from rfpp.config import ConfigError, load_config  # noqa: E402
from rfpp.train import (  # noqa: E402
    EMA,
    InfiniteSampler,
    NonFiniteLossError,
    ResumeError,
    checkpoint_metrics,
    list_checkpoints,
    lr_at,
    read_checkpoint,
    train_arm,
)
from rfpp.train import loop as train_loop  # noqa: E402


def fresh(world: Path, tmp_path: Path, train: dict | None = None) -> Path:
    """A new results root that shares the module's teacher and pairs (copied), with its own train/ folder."""
    import shutil

    shutil.copytree(world / "results", tmp_path / "results")
    if train:
        make_profile_only(world, tmp_path, train)
    else:
        shutil.copy(world / "tiny.yaml", tmp_path / "tiny.yaml")
    return tmp_path


def make_profile_only(world: Path, root: Path, train: dict) -> None:
    import yaml

    profile = yaml.safe_load((world / "tiny.yaml").read_text())
    profile["train"].update(train)
    (root / "tiny.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_state(path)["state_dict"]


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- pieces ----------------------------------------------------------------------------------------------------
def test_sampler_is_deterministic_partitioned_and_resumable():
    size, batch = 10, 4
    one = InfiniteSampler(size, batch, seed=5)
    stream = [i for _, i in zip(range(40), iter(one), strict=False)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation every epoch
    ranks = [iter(InfiniteSampler(size, batch, rank=r, world=2, seed=5)) for r in range(2)]
    for step in range(10):  # each step: rank 0 takes the first half of the global batch, rank 1 the second
        got = [next(ranks[0]), next(ranks[0]), next(ranks[1]), next(ranks[1])]
        assert got == stream[step * batch:(step + 1) * batch]
    later = [i for _, i in zip(range(8), iter(InfiniteSampler(size, batch, seed=5, start_step=3)), strict=False)]
    assert later == stream[12:20]
    assert stream != [i for _, i in zip(range(40), iter(InfiniteSampler(size, batch, seed=6)), strict=False)]


def test_lr_warmup_then_constant(world):
    config, _ = world_config(world, ["train.warmup=4", "train.lr=1e-3"])
    assert [lr_at(s, config.train) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    config, _ = world_config(world, ["train.warmup=0"])
    assert lr_at(0, config.train) == config.train.lr


def test_ema_copies_until_start_then_averages():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.5, start=1)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net, 1)
    assert torch.equal(ema.module.weight, net.weight)
    with torch.no_grad():
        net.weight.fill_(4.0)
    ema.update(net, 2)
    assert torch.allclose(ema.module.weight, torch.full_like(net.weight, 3.0))
    assert not ema.module.weight.requires_grad


def test_config_validation_names_the_key(world):
    for override, key in [("train.nonfinite=maybe", "train.nonfinite"), ("train.micro_batch=0", "train.micro_batch"),
                          ("train.perceptual=vgg", "train.perceptual"), ("train.ckpt_every=0", "train.ckpt_every"),
                          ("train.arms.baseline.huber_c=x", "huber_c")]:
        with pytest.raises(ConfigError, match=key):
            load_config(str(world / "tiny.yaml"), [override])
    for profile in ("digits", "cifar10", "afhq64", "ffhq64", "imagenet64"):
        load_config(profile)


# ---- exact resume ----------------------------------------------------------------------------------------------
def test_stopped_and_resumed_run_is_bitwise_equal_and_never_reloads_the_teacher(world, tmp_path):
    """6 steps in one go vs 3 (--until) + 3 resumed with dropout, accumulation and warmup: a resume that reloaded
    the teacher's weights (the reference code's bug) would restart from step 0's weights and end elsewhere. A
    teacher replaced by other weights after the checkpoint is refused (an input of the run changed); the resume
    goes on once the original teacher is back."""
    over = ["train.micro_batch=4"]
    a = fresh(world, tmp_path / "a")
    config, paths = world_config(a, over)
    full = train_arm(config, "baseline", paths, progress=False)
    assert full.finished and full.step == 6

    b = fresh(world, tmp_path / "b")
    config_b, paths_b = world_config(b, over)
    part = train_arm(config_b, "baseline", paths_b, until=3, progress=False)
    assert not part.finished and part.step == 3 and not paths_b.student("baseline", 0).exists()
    save_model(paths_b.teacher, tiny_teacher(seed=99), meta={"source": "another teacher"})
    with pytest.raises(ResumeError, match="--resume"):
        train_arm(config_b, "baseline", paths_b, progress=False)
    with pytest.raises(ResumeError, match="input teacher="):
        train_arm(config_b, "baseline", paths_b, resume=True, progress=False)
    save_model(paths_b.teacher, tiny_teacher(), meta={"source": "test"})  # the original teacher, back
    rest = train_arm(config_b, "baseline", paths_b, resume=True, progress=False)
    assert rest.resumed_from == 3 and rest.finished

    assert_bitwise(weights(paths.student("baseline", 0)), weights(paths_b.student("baseline", 0)))
    ca = read_checkpoint(list_checkpoints(paths.train_dir("baseline", 0) / "checkpoints")[-1][1])
    cb = read_checkpoint(list_checkpoints(paths_b.train_dir("baseline", 0) / "checkpoints")[-1][1])
    assert_bitwise(ca["model"], cb["model"])
    assert_bitwise(ca["ema"], cb["ema"])
    assert torch.equal(ca["t_hist"], cb["t_hist"]) and ca["t_hist"].sum() == 6 * 8
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ca["data"] == cb["data"] == {"position": 48, "batch": 8, "seed": 0, "world": 1, "micro_batch": 4}
    # the report reads a checkpoint's metrics alone (memory-mapped), the same ones the verified read gives
    newest = list_checkpoints(paths.train_dir("baseline", 0) / "checkpoints")[-1][1]
    assert checkpoint_metrics(newest) == ca["metrics"] and "images_per_s" in ca["metrics"]


def test_resume_refuses_other_settings_and_restart_starts_over(world, tmp_path):
    root = fresh(world, tmp_path)
    config, paths = world_config(root)
    train_arm(config, "baseline", paths, until=3, progress=False)
    changed, _ = world_config(root, ["train.lr=5e-4"])
    with pytest.raises(ResumeError, match="train.lr"):
        train_arm(changed, "baseline", paths, resume=True, progress=False)
    longer, _ = world_config(root, ["train.steps=7", "train.arms.huber.a=2.0"])  # may change: steps, other arms
    assert train_arm(longer, "baseline", paths, resume=True, progress=False).step == 7
    again = train_arm(config, "baseline", paths, restart=True, until=3, progress=False)
    assert again.resumed_from is None and again.step == 3


def test_init_teacher_starts_from_the_teacher_and_scratch_does_not(world, tmp_path):
    root = fresh(world, tmp_path)
    config, paths = world_config(root, ["train.lr=1e-12", "train.steps=1", "train.dropout=0.0"])
    train_arm(config, "baseline", paths, progress=False)
    teacher = weights(paths.teacher)
    student = weights(paths.student("baseline", 0))
    assert all(torch.allclose(student[k], teacher[k], atol=1e-6) for k in teacher)
    scratch, _ = world_config(root, ["train.lr=1e-12", "train.steps=1", "train.arms.baseline.init=scratch"])
    train_arm(scratch, "baseline", paths, restart=True, progress=False)
    student = weights(paths.student("baseline", 0))
    assert not all(torch.allclose(student[k], teacher[k], atol=1e-3) for k in teacher)
    velocity, info = load_model(paths.student("baseline", 0))
    assert info["meta"]["weights"] == "ema" and info["meta"]["steps"] == 1
    assert info["net_kwargs"]["dropout"] == 0.1  # the student's net is built with train.dropout


# ---- non-finite losses ---------------------------------------------------------------------------------------
class _PoisonAt(torch.nn.Module):
    """Wraps a ReflowLoss; the loss of the `at`-th call (1-based) is NaN."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0
        self.kind = inner.kind

    def describe(self) -> str:
        return self.inner.describe()

    def forward(self, *args):
        self.calls += 1
        loss, terms = self.inner(*args)
        return (loss * float("nan"), terms) if self.calls == self.at else (loss, terms)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(world, tmp_path, monkeypatch, mode):
    root = fresh(world, tmp_path)
    config, paths = world_config(root, [f"train.nonfinite={mode}"])
    real = train_loop.build_loss
    monkeypatch.setattr(train_loop, "build_loss", lambda *a: _PoisonAt(real(*a), at=5))
    ckpts = paths.train_dir("baseline", 0) / "checkpoints"
    if mode == "stop":
        message = r"step 5 of arm 'baseline'.*last good checkpoint is .*step-00000003"
        with pytest.raises(NonFiniteLossError, match=message):
            train_arm(config, "baseline", paths, progress=False)
        assert [s for s, _ in list_checkpoints(ckpts)] == [3]
        good = read_checkpoint(list_checkpoints(ckpts)[0][1])
        assert all(torch.isfinite(v).all() for v in good["model"].values())
        assert not paths.student("baseline", 0).exists()
    else:
        result = train_arm(config, "baseline", paths, progress=False)
        assert result.finished and result.skipped == 1
        assert read_checkpoint(list_checkpoints(ckpts)[-1][1])["skipped"] == 1
        assert all(torch.isfinite(v).all() for v in weights(paths.student("baseline", 0)).values())


# ---- every arm kind ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a random-weight VGG16 under torchvision's file name (no download)."""
    from weight_files import write_random_vgg16

    home = tmp_path_factory.mktemp("torch_home")
    write_random_vgg16(home)
    return home


_VGG = pytest.mark.slow  # VGG16 on two CPU cores: seconds per step
ARMS = [("uniform", "l2-squared", "lpips-vgg16"), ("u_shaped", "pseudo-huber", "lpips-vgg16"),
        pytest.param("u_shaped", "lpips-huber", "lpips-vgg16", marks=_VGG),
        ("u_shaped", "lpips-huber-1/t", "lpips-vgg16-maxpool"),
        pytest.param("logit_normal", "lpips", "lpips-vgg16", marks=_VGG)]


@pytest.mark.parametrize("timesteps,loss,perceptual", ARMS)
def test_every_arm_kind_trains_a_few_steps(world, tmp_path, monkeypatch, torch_home, timesteps, loss, perceptual):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    root = fresh(world, tmp_path, {"arms": {"arm": {"timesteps": timesteps, "loss": loss, "init": "teacher"}}})
    config, paths = world_config(root, ["train.steps=2", "train.batch=4", "train.ckpt_every=2", "train.log_every=1",
                                        "train.lpips_resize=32", f"train.perceptual={perceptual}"])
    result = train_arm(config, "arm", paths, progress=False)
    assert result.finished and result.step == 2
    assert result.metrics["loss"] > 0 and all(v == v for v in result.metrics.values())
    expected = {"l2-squared": {"loss_l2_squared"}, "pseudo-huber": {"loss_pseudo_huber"},
                "lpips": {"loss_lpips"}}.get(loss, {"loss_lpips", "loss_pseudo_huber"})
    assert expected <= set(result.metrics)
    _, info = load_model(paths.student("arm", 0))
    assert info["meta"]["loss"] == loss
    if "lpips" in loss:
        pool = "maxpool" if perceptual.endswith("maxpool") else "avgpool"
        described = info["meta"]["perceptual"]
        assert described.startswith(f"{loss}; ") and f"lpips-vgg16-{pool}" in described
    samples = paths.train_dir("arm", 0) / "samples"
    assert (samples / "timesteps.png").exists() and (samples / "step-00000002-nfe1.png").exists()


def test_digits_classifier_perceptual(world, tmp_path):
    pytest.importorskip("rfpp.eval.digits_classifier")
    from rfpp.eval.digits_classifier import DigitsClassifier, save_feature_net

    root = fresh(world, tmp_path, {"arms": {"arm": {"timesteps": "u_shaped", "loss": "lpips-huber"}}})
    config, paths = world_config(root, ["train.steps=1", "train.perceptual=digits-classifier"])
    with pytest.raises(Exception, match="rfpp features"):
        train_arm(config, "arm", paths, progress=False)
    torch.manual_seed(0)
    save_feature_net(paths.features, DigitsClassifier(resolution=8), {"accuracy": 0.1})
    train_arm(config, "arm", paths, restart=True, progress=False)
    _, info = load_model(paths.student("arm", 0))
    assert "feature-lpips(digits-classifier)" in info["meta"]["perceptual"]
    assert info["meta"]["fingerprint"]["inputs"]["perceptual"] == file_sha256(paths.features)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(world, tmp_path, precision):
    root = fresh(world, tmp_path)
    config, paths = world_config(root, ["train.steps=2", f"train.precision={precision}", "train.channels_last=true"])
    result = train_arm(config, "huber", paths, progress=False)
    assert result.finished and torch.isfinite(torch.tensor(result.metrics["loss"]))
    ckpt = read_checkpoint(list_checkpoints(paths.train_dir("huber", 0) / "checkpoints")[-1][1])
    assert (ckpt["scaler"] is not None) == (precision == "fp16")


@pytest.mark.slow
def test_compiled_training_matches_eager_and_resumes_bitwise(tmp_path):
    """train.compile=true (torch.compile of the student and the loss; inductor's C++ backend here): 4 steps match
    the eager run to float tolerance, and 2 (--until) + 2 resumed compiled steps equal 4 compiled steps bitwise.
    Dropout is off for the comparison: inductor draws its own random numbers, so compiled dropout masks differ
    from eager ones (compiled runs still resume bitwise)."""
    world = tmp_path / "world"  # its own world: a one-level network (train_helpers.ONE_LEVEL_NET) compiles faster
    make_world(world, net=ONE_LEVEL_NET)
    over = ["train.steps=4", "train.ckpt_every=2", "train.dropout=0.0"]
    eager = fresh(world, tmp_path / "eager")
    config, paths = world_config(eager, over)
    train_arm(config, "huber", paths, progress=False)

    compiled = fresh(world, tmp_path / "compiled")
    config_c, paths_c = world_config(compiled, [*over, "train.compile=true"])
    assert train_arm(config_c, "huber", paths_c, progress=False).finished
    a, b = weights(paths.student("huber", 0)), weights(paths_c.student("huber", 0))
    assert a.keys() == b.keys()  # no torch.compile prefixes in the saved student
    teacher = tiny_teacher(net=ONE_LEVEL_NET).state_dict()
    moved = sum((a[k] - teacher[k]).square().sum() for k in a).sqrt()
    apart = sum((a[k] - b[k]).square().sum() for k in a).sqrt()
    assert moved > 0 and apart < 1e-2 * moved  # Adam's sign-like steps magnify round-off on ~0 gradients

    resumed = fresh(world, tmp_path / "resumed")
    config_r, paths_r = world_config(resumed, [*over, "train.compile=true"])
    train_arm(config_r, "huber", paths_r, until=2, progress=False)
    assert train_arm(config_r, "huber", paths_r, resume=True, progress=False).resumed_from == 2
    assert_bitwise(b, weights(paths_r.student("huber", 0)))


def test_each_training_seed_has_its_own_student_and_a_seed_gives_the_same_one_again(world, tmp_path):
    """train.seeds=[0, 1]: each seed trains into train/<arm>/seed<k>/ (its own data order, timesteps and dropout);
    the same seed in another profile that lists more seeds gives the bitwise same student with the same
    fingerprint (adding a seed leaves the others' runs valid); a seed outside train.seeds, or none when there are
    several, is a ConfigError."""
    over = ["train.steps=3", "train.ckpt_every=3"]
    root = fresh(world, tmp_path / "a")
    config, paths = world_config(root, [*over, "train.seeds=[0, 1]"])
    for seed in (0, 1):
        assert train_arm(config, "baseline", paths, progress=False, seed=seed).finished
    other = fresh(world, tmp_path / "b")
    config_b, paths_b = world_config(other, [*over, "train.seeds=[5, 0, 1]"])
    train_arm(config_b, "baseline", paths_b, progress=False, seed=0)

    seed0, seed1, again = (weights(p.student("baseline", k)) for p, k in ((paths, 0), (paths, 1), (paths_b, 0)))
    assert_bitwise(seed0, again)
    assert any(not torch.equal(seed0[k], seed1[k]) for k in seed0), "two seeds trained the same student"
    infos = [load_model(p.student("baseline", k))[1]["meta"] for p, k in ((paths, 0), (paths, 1), (paths_b, 0))]
    assert [i["seed"] for i in infos] == [0, 1, 0] and infos[0]["config"]["train"]["seeds"] == [0]
    assert infos[0]["fingerprint"]["id"] == infos[2]["fingerprint"]["id"] != infos[1]["fingerprint"]["id"]
    with pytest.raises(ConfigError, match=r"training seed 7 is not in train.seeds \[0, 1\]"):
        train_arm(config, "baseline", paths, progress=False, seed=7)
    with pytest.raises(ConfigError, match="name one"):
        train_arm(config, "baseline", paths, progress=False)


# ---- the command ---------------------------------------------------------------------------------------------
def test_cli_exit_codes_and_all_arms(world, tmp_path):
    from cli.main import app

    root = fresh(world, tmp_path)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        runner = CliRunner()
        profile = str(root / "tiny.yaml")
        res = runner.invoke(app, ["train", "--profile", profile, "--arm", "nope"])
        assert res.exit_code == 2 and "baseline, huber" in res.output
        res = runner.invoke(app, ["train", "--profile", profile, "--dry-run", "train.steps=3"])
        assert res.exit_code == 0 and "steps: 3" in res.output
        res = runner.invoke(app, ["train", "--profile", profile, "--no-progress", "train.steps=2"])
        assert res.exit_code == 0, res.output
        assert all((root / "results/tiny/train" / arm / "seed0" / "final.pt").exists() for arm in ("baseline", "huber"))
        assert (root / "results/tiny/train/baseline/seed0/config.yaml").exists()
        res = runner.invoke(app, ["train", "--profile", profile, "--arm", "baseline", "train.steps=2"])
        assert res.exit_code == 2 and "--resume" in res.output
        res = runner.invoke(app, ["train", "--profile", profile, "--arm", "baseline", "--resume", "train.lr=0.1"])
        assert res.exit_code == 2 and "train.lr" in res.output
        (root / "results/tiny/pairs/manifest.json").unlink()
        res = runner.invoke(app, ["train", "--profile", profile, "--arm", "baseline", "--restart"])
        assert res.exit_code == 1 and "rfpp pairs" in res.output
    finally:
        os.chdir(cwd)


def test_bench_train_smoke():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train

    r = bench_train.bench("small", "pseudo-huber", "fp32", False, batch=4, steps=1, warmup=1,
                          device=torch.device("cpu"), count=True)
    assert r["img_s"] > 0 and 0.01 < r["gflop"] < 10
