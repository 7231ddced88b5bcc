"""Arms compared over several training seeds: FID by arm × NFE, per seed, mean ± sd, and the paired difference.

One training run is one draw: the 1-NFE FIDs of two arms trained with different seeds can differ by more
than the arms do (on digits, 600 steps: the baseline spans 10.12–10.31 over three seeds). Before calling a
winner, train each arm with a few seeds on the SAME teacher and pairs, sample with the SAME noise, and look
at the paired differences. That is what this script does, with the real `rfpp` commands:

    python benchmarks/compare_arms.py --profile digits --seeds 0,1,2               # needs the profile's pairs
    python benchmarks/compare_arms.py --profile digits --seeds 0,1,2 --jobs 2 train.steps=1500

For each seed k it runs `rfpp train --arm A`, `rfpp sample --arm A --nfe N` and `rfpp fid` for every arm and
NFE of the profile in a copy of the profile named <profile>-seed<k> (top-level `seed: k`, the training seed;
sample.seed stays fixed, so every arm and seed is sampled from the same noise). The copies share the
profile's teacher, pairs and feature network (symlinks to results/<profile>/…, which must exist: run
`snakemake --cores all results/<profile>/pairs/manifest.json` first), so only training is redone. Extra
`key=value` arguments are dotted overrides applied to every run (they go into each copy's profile file).
The table goes to stdout and, with all FIDs, to results/<profile>/compare/<tag>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfpp.atomic import write_json  # noqa: E402
from rfpp.config import apply_overrides, load_config, profile_path  # noqa: E402
from rfpp.paths import ProfilePaths  # noqa: E402

SHARED = ("teacher", "pairs", "features")  # stages that do not depend on the training seed


def seed_profile(base: dict, name: str, seed: int, overrides: list[str]) -> dict:
    """The base profile's dict renamed to `name`, with `seed` and the dotted overrides applied (rfpp.config's
    own override rules; `rfpp` validates the result when it loads the copy)."""
    return apply_overrides(copy.deepcopy(base), [*overrides, f"seed={seed}", f"profile={name}"])


def run(args: list[str], log: Path, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RFPP_TRACKING=os.environ.get("RFPP_TRACKING", "off"))
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}; see {log}")


def one_seed(seed: int, profile_file: Path, arms: list[str], nfes: list[int], log: Path,
             threads: int) -> dict[str, dict[int, float]]:
    """Train, sample and score every arm for one seed → {arm: {nfe: FID}}."""
    rfpp = [str(Path(sys.executable).parent / "rfpp")]
    config = load_config(str(profile_file))
    paths = ProfilePaths.of(config.profile, ROOT / "results")
    fids: dict[str, dict[int, float]] = {}
    for arm in arms:
        run([*rfpp, "train", "--profile", str(profile_file), "--arm", arm, "--restart", "--no-progress"], log, threads)
        fids[arm] = {}
        for nfe in nfes:
            run([*rfpp, "sample", "--profile", str(profile_file), "--arm", arm, "--nfe", str(nfe)], log, threads)
            run([*rfpp, "fid", "--profile", str(profile_file), "--arm", arm, "--nfe", str(nfe)], log, threads)
            record = json.loads(paths.fid(arm, nfe).read_text())
            fids[arm][nfe] = float(record["value"])
    return fids


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="digits", help="profile name in params/ or a YAML path")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (one CPU thread each when > 1)")
    parser.add_argument("--tag", default=None, help="name of the result json (default: a timestamp)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.steps=1500")
    args = parser.parse_args()

    base = yaml.safe_load(profile_path(args.profile).read_text())
    name = base["profile"]
    source = ROOT / "results" / name
    missing = [d for d in SHARED if d != "features" and not (source / d).exists()]
    if missing:
        raise SystemExit(f"results/{name}/{missing[0]} does not exist: build the shared stages first with "
                         f"`snakemake --cores all --config profile={name} results/{name}/pairs/manifest.json`")
    seeds = [int(s) for s in args.seeds.split(",")]
    resolved = seed_profile(base, name, seeds[0], args.overrides)  # arms and NFEs after the overrides
    arms = list(resolved["train"]["arms"])
    nfes = [int(k) for k in resolved["sample"]["nfe"]]
    out_dir = source / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    threads = 1 if args.jobs > 1 else max(1, os.cpu_count() or 1)

    jobs = []
    for seed in seeds:
        copy_name = f"{name}-seed{seed}"
        results = ROOT / "results" / copy_name
        results.mkdir(parents=True, exist_ok=True)
        for part in SHARED:
            link = results / part
            if (source / part).exists() and not link.exists():
                link.symlink_to(source / part, target_is_directory=True)
        profile_file = out_dir / f"{tag}-{copy_name}.yaml"
        profile_file.write_text(yaml.safe_dump(seed_profile(base, copy_name, seed, args.overrides), sort_keys=False))
        jobs.append((seed, profile_file, out_dir / f"{tag}-{copy_name}.log"))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {seed: pool.submit(one_seed, seed, pf, arms, nfes, log, threads) for seed, pf, log in jobs}
        by_seed = {seed: future.result() for seed, future in futures.items()}
    seconds = time.perf_counter() - start

    print(f"profile {name}, seeds {seeds}, overrides {args.overrides or 'none'}: {seconds:.0f} s")
    print("| arm | NFE | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |")
    print("|---|---|" + "---|" * len(seeds) + "---|")
    for arm in arms:
        for nfe in nfes:
            values = [by_seed[s][arm][nfe] for s in seeds]
            print(f"| {arm} | {nfe} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean_sd(values)} |")
    if len(arms) >= 2:
        ref = arms[0]
        for arm in arms[1:]:
            for nfe in nfes:
                diffs = [by_seed[s][arm][nfe] - by_seed[s][ref][nfe] for s in seeds]
                wins = sum(d < 0 for d in diffs)
                print(f"{arm} − {ref}, NFE {nfe}: {mean_sd(diffs)} FID (lower in {wins} of {len(seeds)} seeds)")
    record = {"profile": name, "seeds": seeds, "overrides": args.overrides, "arms": arms, "nfe": nfes,
              "fid": {str(s): {a: {str(k): v for k, v in r.items()} for a, r in by_seed[s].items()} for s in seeds},
              "seconds": round(seconds, 1)}
    write_json(out_dir / f"{tag}.json", record)
    print(f"-> {out_dir / f'{tag}.json'}")


if __name__ == "__main__":
    main()
