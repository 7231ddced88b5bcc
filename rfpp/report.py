"""`rfpp report`: one markdown page per profile with its tables and plots.

Reads what the stages wrote under results/<profile>/ for every arm, training seed (train.seeds) and NFE, and
tolerates whatever is absent:
- fid/<arm>-seed<k>-nfe<n>.json (rfpp.eval.fid results): FID, protocol, straightness;
- samples/<arm>/seed<k>/nfe<n>.json / .png: straightness (when no FID yet) and sample grids;
- train/<arm>/seed<k>/: any *.json with a throughput key (images_per_s, img_per_s, images_per_sec, throughput) and
  a loss curve from metrics.jsonl / metrics.csv / *.json lists of {"step", "loss"}.
Per arm and NFE the table gives the mean ± sample standard deviation of the FID over the seeds and each seed's
value; for each (arm, reference arm) of report.compare, the paired difference FID(arm) − FID(reference) seed by
seed, its mean ± sd, whether its sign is the same in every seed, and, where the paper has both numbers, whether
it moves the way the paper's does. Writes report.md and report/*.png (FID vs NFE with the seeds' spread, loss
curves, timestep densities, the first seed's sample grids).

A FID result whose recorded samples (the sample file's sha256, else the sample set's fingerprint) are no longer the
ones on disk is marked stale in the table and listed in `write_report`'s "stale"; a directory without any result
raises ReportError instead of writing an empty report.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

from rfpp.images import atomic_write

# The paper's FIDs (50k samples, Inception) that a profile's arm × NFE can stand beside (docs/conventions.md).
PAPER_FID: dict[str, dict[tuple[str, int], tuple[float, str]]] = {
    "cifar10": {("rfpp", 1): (3.38, "2-RF++, no real data"), ("baseline", 1): (12.21, "2-RF baseline (ladder A)"),
                ("teacher_init", 1): (7.14, "+ teacher init, batch 512 (B)"), ("u_shaped", 1): (5.17, "+ U-shaped t"),
                ("pseudo_huber", 1): (5.24, "+ pseudo-Huber"), ("lpips_huber", 1): (3.42, "+ LPIPS-Huber")},
    "imagenet64": {("rfpp", 1): (4.31, "2-RF++"), ("rfpp", 2): (3.64, "2-RF++")},
    "afhq64": {("rfpp", 1): (4.11, "2-RF++")},
    "ffhq64": {("rfpp", 1): (5.21, "2-RF++")},
    # The ladder in miniature stands beside the paper's CIFAR-10 ladder: only the directions of its steps compare.
    "digits-ladder": {("A-2rf", 1): (12.21, "CIFAR-10 A: 2-RF"), ("B-teacher-init", 1): (7.14, "CIFAR-10 B"),
                      ("C-u-shaped", 1): (5.17, "CIFAR-10 C"), ("D-pseudo-huber", 1): (5.24, "CIFAR-10 D"),
                      ("E-lpips-huber", 1): (3.42, "CIFAR-10 E"), ("F-lpips-huber-1t", 1): (3.38, "CIFAR-10 F")},
}
LADDER = [("2-RF baseline", 12.21), ("+ teacher init and batch 512", 7.14), ("+ U-shaped t", 5.17),
          ("+ pseudo-Huber", 5.24), ("+ LPIPS-Huber", 3.42), ("+ 1/t", 3.38)]
THROUGHPUT_KEYS = ("images_per_s", "img_per_s", "images_per_sec", "train_images_per_s", "throughput")


class ReportError(RuntimeError):
    """Nothing to report: no result of the profile where the report looked."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _find_key(obj: Any, keys: tuple[str, ...]) -> float | None:
    if isinstance(obj, dict):
        for k in keys:
            if isinstance(obj.get(k), int | float):
                return float(obj[k])
        for v in obj.values():
            found = _find_key(v, keys)
            if found is not None:
                return found
    return None


def training_throughput(train_dir: Path) -> float | None:
    """Training images/s recorded by the training stage: a json in train/<arm>/, else the last logged metrics of
    the newest training checkpoint (train/<arm>/checkpoints/step-*.pt)."""
    if not train_dir.is_dir():
        return None
    for path in sorted(train_dir.glob("*.json")):
        value = _find_key(_read_json(path), THROUGHPUT_KEYS)
        if value is not None:
            return value
    try:
        from rfpp.train.checkpoint import checkpoint_metrics, list_checkpoints

        found = list_checkpoints(train_dir / "checkpoints")
        if found:  # its metrics alone: a training checkpoint of ImageNet-64's ADM is 4.7 GB
            return _find_key(checkpoint_metrics(found[-1][1]), THROUGHPUT_KEYS)
    except Exception:  # noqa: BLE001 - the report tolerates any missing or foreign training output
        return None
    return None


def mlflow_loss_curve(profile: str, arm: str, seed: int) -> list[tuple[float, float]]:
    """The 'loss' history of the newest finished MLflow train run of (profile, arm, seed), if tracking is on."""
    try:
        from rfpp.tracking import tracking_enabled, tracking_uri

        if not tracking_enabled():
            return []
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri())
        exp = client.get_experiment_by_name(f"rfpp-{profile}")
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`rfpp.stage` = 'train' and "
                                  f"tags.`rfpp.arm` = '{arm}' and tags.`rfpp.seed` = '{seed}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return []
        return sorted((float(m.step), float(m.value)) for m in client.get_metric_history(runs[0].info.run_id, "loss"))
    except Exception:  # noqa: BLE001 - best effort: the report never fails for want of a loss curve
        return []


def loss_curve(train_dir: Path) -> list[tuple[float, float]]:
    """(step, loss) points from metrics.jsonl, metrics.csv or a json list, if the training stage wrote them."""
    points: list[tuple[float, float]] = []

    def take(row: Any) -> None:
        if isinstance(row, dict) and "loss" in row:
            try:
                points.append((float(row.get("step", len(points))), float(row["loss"])))
            except (TypeError, ValueError):
                pass

    if not train_dir.is_dir():
        return points
    for path in sorted(train_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            text = line.strip()
            if text:
                try:
                    take(json.loads(text))
                except ValueError:
                    continue
    if not points:
        for path in sorted(train_dir.glob("*.csv")):
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    take(row)
    if not points:
        for path in sorted(train_dir.glob("*.json")):
            data = _read_json(path)
            rows = data if isinstance(data, list) else data.get("history") if isinstance(data, dict) else None
            for row in rows or []:
                take(row)
    return sorted(points)


def stale_samples(result: Any) -> str | None:
    """Why a FID result no longer describes the samples on disk, or None: it does, it recorded none (an older
    rfpp), or its samples are gone (the number stands for what it scored)."""
    recorded = result.get("samples") if isinstance(result, dict) else None
    if not isinstance(recorded, dict) or not recorded.get("path"):
        return None
    from rfpp.checkpoints import file_sha256
    from rfpp.eval.generate import stem_of, with_ext

    path = Path(recorded["path"])
    if recorded.get("sha256") and path.is_file():
        now = file_sha256(path)
        if now != recorded["sha256"]:
            return (f"{path} was remade after its FID was computed (sha256 {recorded['sha256'][:12]}… scored, "
                    f"{now[:12]}… on disk)")
    elif recorded.get("fingerprint") and path.exists():
        made_by = (_read_json(with_ext(stem_of(path), ".json")) or {}).get("fingerprint") or {}
        if made_by.get("id") != recorded["fingerprint"]:
            return (f"{path} was remade after its FID was computed (fingerprint {recorded['fingerprint'][:12]}… "
                    f"scored, {str(made_by.get('id'))[:12]}… on disk)")
    return None


def collect(config: Any, paths: Any) -> list[dict[str, Any]]:
    """One row per arm × training seed × NFE with whatever is known."""
    rows = []
    for arm in config.train.arms:
        for seed in config.train.seeds:
            throughput = training_throughput(paths.train_dir(arm, seed))
            for nfe in config.sample.nfe:
                fid = _read_json(paths.fid(arm, seed, nfe))
                fid = fid if isinstance(fid, dict) else None
                meta = _read_json(paths.samples(arm, seed, nfe).with_suffix(".json"))
                grid = paths.samples(arm, seed, nfe).with_suffix(".png")
                default = str(paths.samples(arm, seed, nfe))
                scored = str(((fid or {}).get("samples") or {}).get("path") or default)
                paper = PAPER_FID.get(config.profile, {}).get((arm, nfe))
                straightness = (fid or {}).get("straightness")
                rows.append({"arm": arm, "seed": seed, "nfe": nfe, "fid": (fid or {}).get("value"),
                             "protocol_id": (fid or {}).get("protocol_id"),
                             "feature_net": (fid or {}).get("protocol", {}).get("feature_net"),
                             "straightness": straightness if straightness is not None else (meta or {}).get(
                                 "straightness"),
                             "images_per_s": throughput, "paper_fid": paper[0] if paper else None,
                             "paper_note": paper[1] if paper else None, "grid": str(grid) if grid.exists() else None,
                             "t_start": ((fid or {}).get("sampling") or {}).get("t_start"),
                             "stale": stale_samples(fid),
                             "fid_command": fid_command(config.profile, arm, seed, nfe,
                                                        scored if scored != default else None),
                             "result": fid})
    return rows


def spread(values: list[float]) -> dict[str, Any]:
    """{"n", "mean", "sd"} of `values`: sd is the sample standard deviation (n − 1), None below two values."""
    n = len(values)
    if not n:
        return {"n": 0, "mean": None, "sd": None}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd}


def summarize(config: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm × NFE: the FID over the seeds ({"n", "mean", "sd"}), each seed's FID, the mean straightness and
    training images/s, and the paper's number."""
    out = []
    for arm in config.train.arms:
        for nfe in config.sample.nfe:
            mine = [r for r in rows if r["arm"] == arm and r["nfe"] == nfe]
            fids = {r["seed"]: r["fid"] for r in mine if r["fid"] is not None}
            straight = [r["straightness"] for r in mine if r["straightness"] is not None]
            speed = [r["images_per_s"] for r in mine if r["images_per_s"] is not None]
            out.append({"arm": arm, "nfe": nfe, "fid": spread(list(fids.values())), "per_seed": fids,
                        "straightness": spread(straight)["mean"], "images_per_s": spread(speed)["mean"],
                        "paper_fid": mine[0]["paper_fid"] if mine else None,
                        "paper_note": mine[0]["paper_note"] if mine else None,
                        "stale": any(r["stale"] for r in mine)})
    return out


def comparisons(config: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (arm, reference) of report.compare and each NFE: the paired differences FID(arm) − FID(reference)
    of the seeds that have both, their {"n", "mean", "sd"}, whether the sign is the same in every seed
    ("sign_holds"), whether |mean| exceeds the sd ("beyond_spread"), and, where PAPER_FID has both arms, the
    paper's difference and whether the mean moves the same way ("as_paper")."""
    fid = {(r["arm"], r["seed"], r["nfe"]): r["fid"] for r in rows if r["fid"] is not None}
    paper = PAPER_FID.get(config.profile, {})
    out = []
    for arm, ref in config.report.compare:
        for nfe in config.sample.nfe:
            diffs = {seed: fid[arm, seed, nfe] - fid[ref, seed, nfe] for seed in config.train.seeds
                     if (arm, seed, nfe) in fid and (ref, seed, nfe) in fid}
            stats = spread(list(diffs.values()))
            signs = {math.copysign(1.0, d) for d in diffs.values() if d != 0}
            paper_diff = (paper[arm, nfe][0] - paper[ref, nfe][0]) if (arm, nfe) in paper and (ref, nfe) in paper \
                else None
            out.append({"arm": arm, "reference": ref, "nfe": nfe, "diff": stats, "per_seed": diffs,
                        "sign_holds": bool(diffs) and len(signs) == 1 and 0 not in diffs.values(),
                        "beyond_spread": stats["sd"] is not None and abs(stats["mean"]) > stats["sd"],
                        "paper_diff": paper_diff,
                        "as_paper": None if paper_diff is None or stats["mean"] is None else
                        (stats["mean"] < 0) == (paper_diff < 0)})
    return out


def fid_command(profile: str, arm: str, seed: int, nfe: int, samples: str | None = None) -> str:
    """The `rfpp fid` command that recomputes a FID from the samples on disk (`samples`: a non-default path)."""
    return (f"rfpp fid --profile {profile} --arm {arm} --train-seed {seed} --nfe {nfe}"
            + (f" --samples {samples}" if samples else ""))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _plots(config: Any, paths: Any, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
           plot_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from rfpp.timesteps import density

    plot_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = plot_dir / name
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        out[name] = path

    fig, ax = plt.subplots(figsize=(5, 3.5))
    plotted = False
    for arm in config.train.arms:
        pts = [(m["nfe"], m["fid"]["mean"], m["fid"]["sd"] or 0.0) for m in summary
               if m["arm"] == arm and m["fid"]["mean"] is not None]
        if pts:
            nfe, mean, sd = zip(*pts, strict=True)
            ax.errorbar(nfe, mean, yerr=sd, marker="o", capsize=3, label=arm)
            plotted = True
    ax.set_xlabel("NFE")
    ax.set_ylabel("FID (mean ± sd over seeds)" if len(config.train.seeds) > 1 else "FID")
    ax.set_xscale("log", base=2)
    ax.set_title(f"FID vs NFE ({_feature_net_label(rows)})", fontsize=9)
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no FID results yet", ha="center", transform=ax.transAxes)
    save(fig, "fid_vs_nfe.png")

    several = len(config.train.seeds) > 1
    curves = {(arm, seed): loss_curve(paths.train_dir(arm, seed)) or mlflow_loss_curve(config.profile, arm, seed)
              for arm in config.train.arms for seed in config.train.seeds}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for (arm, seed), pts in curves.items():
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"{arm} seed {seed}" if several else arm)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend()
        save(fig, "loss_curves.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    t = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    for arm, spec in config.train.arms.items():
        try:
            ax.plot(t.numpy(), density(t, kind=spec.timesteps, a=spec.a).numpy(), label=f"{arm} ({spec.timesteps})")
        except ValueError:
            continue
    ax.set_xlabel("t (0 data, 1 noise)")
    ax.set_ylabel("density")
    ax.legend()
    save(fig, "timestep_density.png")

    for r in rows:
        if r["grid"] and r["seed"] == config.train.seeds[0]:
            name = f"samples_{r['arm']}_nfe{r['nfe']}.png"
            shutil.copyfile(r["grid"], plot_dir / name)
            out[name] = plot_dir / name
    return out


def _feature_net_label(rows: list[dict[str, Any]]) -> str:
    nets = sorted({r["feature_net"] for r in rows if r["feature_net"]})
    if not nets:
        return "no FID yet"
    return ", ".join("digits-classifier features standing in for Inception" if n == "digits-classifier"
                     else "Inception-v3 features" for n in nets)


def _pm(stats: dict[str, Any]) -> str:
    """"mean ± sd" (or the one value, or —)."""
    if stats["mean"] is None:
        return "—"
    return _fmt(stats["mean"]) + (f" ± {_fmt(stats['sd'], 2)}" if stats["sd"] is not None else "")


def _tables(config: Any, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
            compared: list[dict[str, Any]]) -> list[str]:
    """The FID table (per arm × NFE over the seeds) and the paired comparisons of report.compare."""
    seeds = list(config.train.seeds)
    has_paper = any(m["paper_fid"] is not None for m in summary)
    header = ["arm", "NFE", "FID" + (f" (mean ± sd, {len(seeds)} seeds)" if len(seeds) > 1 else ""),
              *(["per seed (" + ", ".join(str(k) for k in seeds) + ")"] if len(seeds) > 1 else []),
              "straightness", "train img/s"] + (["paper FID"] if has_paper else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in summary:
        fid = _pm(m["fid"]) + (" (stale)" if m["stale"] else "")
        cells = [m["arm"], str(m["nfe"]), fid]
        if len(seeds) > 1:
            cells.append(", ".join(_fmt(m["per_seed"].get(k)) for k in seeds))
        cells += [_fmt(m["straightness"]), _fmt(m["images_per_s"])]
        if has_paper:
            cells.append(f"{m['paper_fid']} ({m['paper_note']})" if m["paper_fid"] is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if not has_paper:
        lines += ["", f"The paper reports no numbers for the `{config.profile}` profile."]
    if compared:
        lines += ["", "### Paired differences", "",
                  "FID(arm) − FID(reference) within each training seed (same teacher, pairs and sampling noise); "
                  "negative: the arm is better. *Beyond the spread*: |mean| > sd over the seeds.", "",
                  "| arm − reference | NFE | Δ mean ± sd | per seed | same sign in every seed | beyond the spread | "
                  "paper Δ | moves as the paper's |", "|---|---|---|---|---|---|---|---|"]
        for c in compared:
            per_seed = ", ".join(f"{k}: {_fmt(d)}" for k, d in c["per_seed"].items()) or "—"
            yes = {True: "yes", False: "no", None: "—"}
            lines.append(f"| {c['arm']} − {c['reference']} | {c['nfe']} | {_pm(c['diff'])} | {per_seed} | "
                         f"{yes[c['sign_holds'] if c['per_seed'] else None]} | "
                         f"{yes[c['beyond_spread'] if c['diff']['sd'] is not None else None]} | "
                         f"{_fmt(c['paper_diff'], 3) if c['paper_diff'] is not None else '—'} | "
                         f"{yes[c['as_paper']]} |")
    if config.profile == "cifar10":
        lines += ["", "The paper's CIFAR-10 ablation ladder (FID at 1 NFE, 50k samples, Inception):", "",
                  "| configuration | FID |", "|---|---|"] + [f"| {name} | {v} |" for name, v in LADDER]
    return lines


def render(config: Any, rows: list[dict[str, Any]], plots: dict[str, Path], report_path: Path,
           summary: list[dict[str, Any]] | None = None, compared: list[dict[str, Any]] | None = None) -> str:
    """The markdown text."""
    summary = summarize(config, rows) if summary is None else summary
    compared = comparisons(config, rows) if compared is None else compared
    rel = {name: Path(p).relative_to(report_path.parent) if Path(p).is_relative_to(report_path.parent) else p
           for name, p in plots.items()}
    lines = [f"# rfpp report: profile `{config.profile}`", ""]
    results = [r["result"] for r in rows if r["result"]]
    nets = sorted({r["feature_net"] for r in rows if r["feature_net"]})
    lines.append(f"**FID feature network:** {_feature_net_label(rows)}.")
    if "digits-classifier" in nets:
        lines.append("digits-classifier features stand in for Inception: these FIDs measure the digits classifier's "
                     "64-dim pooled features and are not comparable with published (Inception) FIDs.")
    if results:
        p = results[0]["protocol"]
        lines.append(f"Protocol: {p['num_samples']} samples against `{p['reference']}` (sha256 "
                     f"{str(p['reference_sha256'])[:12]}…), feature net sha256 {str(p['feature_net_sha256'])[:12]}…, "
                     f"torch-fidelity {p['torch_fidelity']}.")
        ids = sorted({r["protocol_id"] for r in rows if r["protocol_id"]})
        if len(ids) > 1:
            lines.append(f"**Warning:** the results below were measured under {len(ids)} different protocols "
                         f"({', '.join(ids)}); compare only rows with the same protocol id.")
    first = ("a user grid " + str(config.sample.schedule) if config.sample.schedule
             else f"the default grid from t₀ = {config.sample.t_start:g}")
    lines += ["", f"Sampling: solver `{config.sample.solver}`, update `{config.sample.update}`, {first}, seed "
                  f"{config.sample.seed}.", ""]
    other = sorted({f"{r['arm']} NFE {r['nfe']} (t₀ = {r['t_start']:g})" for r in rows
                    if r["t_start"] is not None and r["t_start"] != config.sample.t_start})
    if other and not config.sample.schedule:
        lines[-1:-1] = [f"**Warning:** sampled from another first grid point than sample.t_start: "
                        f"{', '.join(other)}.", ""]
    for r in rows:
        if r["stale"]:
            lines[-1:-1] = [f"**Stale:** the FID of {r['arm']} seed {r['seed']} NFE {r['nfe']} is not of the samples "
                            "on disk: "
                            f"{r['stale']}; redo it with `{r['fid_command']}`.", ""]
    lines += _tables(config, rows, summary, compared)
    lines += ["", "## Plots", ""]
    for name, title in (("fid_vs_nfe.png", "FID vs NFE"), ("loss_curves.png", "Training loss"),
                        ("timestep_density.png", "Timestep density per arm")):
        if name in rel:
            lines += [f"### {title}", "", f"![{title}]({rel[name]})", ""]
    if "loss_curves.png" not in rel:
        lines += ["No training loss history was found under train/<arm>/seed<k>/.", ""]
    grids = [n for n in rel if n.startswith("samples_")]
    if grids:
        lines += ["### Samples", ""]
        for n in sorted(grids):
            lines += [f"{n.removeprefix('samples_').removesuffix('.png').replace('_', ', ')}:", "", f"![{n}]({rel[n]})",
                      ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(config: Any, paths: Any, out: Path | None = None) -> dict[str, Any]:
    """Write report.md and report/*.png; returns {"report", "plots", "rows", "stale"} ("stale": one line per FID
    whose samples were remade since, naming the command that redoes it). ReportError when there is no result."""
    out = Path(out or paths.report)
    rows = collect(config, paths)
    found = any(r["fid"] is not None or r["straightness"] is not None or r["grid"] or r["images_per_s"] is not None
                for r in rows) or any(loss_curve(paths.train_dir(arm, seed)) for arm in config.train.arms
                                      for seed in config.train.seeds)
    if not found:
        raise ReportError(f"no results of profile {config.profile!r} under {Path(paths.root).resolve()} (no FID in "
                          "fid/, samples in samples/ or training metrics in train/); make them with `rfpp sample` "
                          "and `rfpp fid` (or the whole pipeline: `snakemake --cores all`), or run `rfpp report` "
                          "from the directory that holds results/")
    summary, compared = summarize(config, rows), comparisons(config, rows)
    plots = _plots(config, paths, rows, summary, out.parent / "report")
    text = render(config, rows, plots, out, summary, compared)
    atomic_write(out, lambda f: f.write(text.encode()))
    return {"report": out, "plots": list(plots.values()),
            "rows": [{k: v for k, v in r.items() if k not in ("result", "grid", "paper_note")} for r in rows],
            "summary": summary, "comparisons": compared,
            "stale": [f"the FID of {r['arm']} seed {r['seed']} NFE {r['nfe']} is stale: {r['stale']}; redo it with "
                      f"`{r['fid_command']}`" for r in rows if r["stale"]]}


def html_page(report_path: Path) -> str:
    """report.md as one self-contained HTML page: CommonMark with tables (markdown-it-py), each image it links to
    (a path relative to the report) embedded as a data: URI. MLflow's artifact viewer shows an .html artifact in a
    sandboxed frame without a base URL, where relative links would not load."""
    import base64
    import html

    from markdown_it import MarkdownIt

    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
             ".svg": "image/svg+xml"}
    report_path = Path(report_path)
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(report_path.read_text(encoding="utf-8"))
    for token in tokens:
        for child in token.children or []:
            src = str(child.attrGet("src") or "") if child.type == "image" else ""
            image = report_path.parent / src
            if src and "://" not in src and image.suffix.lower() in kinds and image.is_file():
                data = base64.b64encode(image.read_bytes()).decode("ascii")
                child.attrSet("src", f"data:{kinds[image.suffix.lower()]};base64,{data}")
    body = md.renderer.render(tokens, md.options, {})
    title = html.escape(next((line.lstrip("# ").strip() for line in report_path.read_text(encoding="utf-8")
                              .splitlines() if line.startswith("# ")), report_path.stem))
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:.25em .6em;"
             "text-align:left}th{background:#f0f0f0}img{max-width:100%;image-rendering:pixelated}"
             "code{background:#f4f4f4;padding:0 .2em}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")
