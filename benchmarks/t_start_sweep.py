"""FID of trained students against the first point t₀ of the sampling grid (`sample.t_start`).

Why: one-step sampling queries the student once, at t₀, and the reference puts t₀ at 1 − 1e−5. For an
EDM-form network that is σ = t/(1 − t) = 1e5, a noise level a training run visits only as often as its
timestep density puts mass within 1e−4 of t = 1 (about 0.02% of the draws for the U-shaped density).
A long run sees enough of them; a short one does not, and its 1-NFE samples show it. This script samples
the given checkpoints from the same noise for every t₀ and NFE with the project's sampler and FID, and
prints one table, so the choice of t₀ is a measurement, not a guess:

    python benchmarks/t_start_sweep.py --profile digits --t-start 0.99999,0.9999,0.999,0.99,0.98
    python benchmarks/t_start_sweep.py --profile digits --checkpoints a=path/a.pt,b=path/b.pt --nfe 1

Default checkpoints: every arm's and training seed's final student of the profile
(results/<profile>/train/<arm>/seed<k>/final.pt); then, for each t₀, the profile's report.compare pairs are
differenced seed by seed as the report does (rfpp.report.comparisons). Also printed for each arm of the profile:
the share of its training timestep draws that lie at or above each t₀ (from the arm's timestep density), i.e. how
often training visited the point the sampler queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfpp.config import load_config  # noqa: E402
from rfpp.devices import resolve_device  # noqa: E402
from rfpp.eval.fid import evaluate_images, feature_net_spec  # noqa: E402
from rfpp.eval.generate import SamplingSpec, generate, load_student  # noqa: E402
from rfpp.paths import ProfilePaths  # noqa: E402
from rfpp.report import comparisons  # noqa: E402
from rfpp.timesteps import cdf  # noqa: E402


def share_at_or_above(kind: str, a: float, t0: float) -> float:
    """P(t ≥ t0) under the arm's squeezed training density."""
    return 1.0 - float(cdf(torch.tensor([t0], dtype=torch.float64), kind, a=a)[0])


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="digits", help="profile name in params/ or a YAML path")
    parser.add_argument("--t-start", default="0.99999,0.9999,0.999,0.99,0.98", help="comma list of t₀")
    parser.add_argument("--nfe", default=None, help="comma list of NFEs (default sample.nfe)")
    parser.add_argument("--checkpoints", default=None, help="name=path,… (default: each arm's final.pt)")
    parser.add_argument("--num-samples", type=int, default=None, help="default eval.num_samples")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. sample.seed=1")
    args = parser.parse_args()

    config = load_config(args.profile, args.overrides)
    paths = ProfilePaths.of(config.profile, ROOT / "results")
    t_starts = [float(t) for t in args.t_start.split(",")]
    nfes = [int(k) for k in args.nfe.split(",")] if args.nfe else list(config.sample.nfe)
    if args.checkpoints:
        targets = {(name, None): path for name, path in (item.split("=", 1) for item in args.checkpoints.split(","))}
    else:
        targets = {(arm, seed): str(paths.student(arm, seed)) for arm in config.train.arms
                   for seed in config.train.seeds}
    missing = [p for p in targets.values() if not Path(p).exists()]
    if missing:
        raise SystemExit(f"{missing[0]} does not exist: train the arms first (or pass --checkpoints)")
    device = resolve_device(config.device)
    ev = config.eval
    fnet = feature_net_spec(ev.feature_net, paths.features, ev.inception_weights)
    num = args.num_samples or ev.num_samples

    start = time.perf_counter()
    rows = []
    for (name, seed), path in targets.items():
        velocity, _ = load_student(path, config)
        for k in nfes:
            fids: list[float] = []
            for t0 in t_starts:
                spec = dataclasses.replace(SamplingSpec.of(config.sample, k), t_start=t0, num_samples=num,
                                           straightness_samples=0)
                images, _, _ = generate(velocity, spec, range(num), device)
                result = evaluate_images(images, fnet, ev.reference, paths.root / "fid", config.data.dataset,
                                         config.data.resolution, num_samples=num, batch=ev.batch, device=device,
                                         reference_sha256=ev.reference_sha256)
                fids.append(result["value"])
            rows.append((name, seed, k, fids))
    seconds = time.perf_counter() - start

    print(f"profile {config.profile}: FID ({ev.feature_net}, {num} samples, sample seed {config.sample.seed}) by "
          f"first grid point t₀; {seconds:.0f} s")
    print("| checkpoint | seed | NFE | " + " | ".join(f"t₀ = {t:g}" for t in t_starts) + " |")
    print("|---|---|---|" + "---|" * len(t_starts))
    for name, seed, k, fids in rows:
        print(f"| {name} | {'—' if seed is None else seed} | {k} | " + " | ".join(f"{f:.2f}" for f in fids) + " |")
    if not args.checkpoints and config.report.compare:
        for i, t0 in enumerate(t_starts):
            diffs = comparisons(config, [{"arm": name, "seed": seed, "nfe": k, "fid": fids[i]}
                                         for name, seed, k, fids in rows])
            print(f"\nPaired differences at t₀ = {t0:g} (FID(arm) − FID(reference), mean ± sd over seeds):")
            print("| arm − reference | NFE | Δ mean | sd | same sign in every seed | beyond the spread | paper Δ | "
                  "moves as the paper's |")
            print("|---|---|---|---|---|---|---|---|")
            for c in diffs:
                d = c["diff"]
                print(f"| {c['arm']} − {c['reference']} | {c['nfe']} | {_num(d['mean'])} | {_num(d['sd'])} | "
                      f"{c['sign_holds']} | {c['beyond_spread']} | {_num(c['paper_diff'])} | {c['as_paper']} |")
    print(f"\nShare of training timestep draws at or above t₀ (and their expected count in {config.train.steps} "
          "steps):")
    print("| arm | timesteps | " + " | ".join(f"t₀ = {t:g}" for t in t_starts) + " |")
    print("|---|---|" + "---|" * len(t_starts))
    for name, arm in config.train.arms.items():
        draws = config.train.steps * (arm.batch or config.train.batch)
        shares = [share_at_or_above(arm.timesteps, arm.a, t) for t in t_starts]
        print(f"| {name} | {arm.timesteps} (a = {arm.a:g}) | "
              + " | ".join(f"{s:.3%} ({s * draws:.0f})" for s in shares) + " |")


if __name__ == "__main__":
    main()
