"""`rfpp report`: one markdown page per profile with its table and plots.

Reads what the stages wrote under results/<profile>/ and tolerates whatever is absent:
- fid/<arm>-nfe<k>.json (rfpp.eval.fid results): FID, protocol, straightness;
- samples/<arm>/nfe<k>.json / .png: straightness (when no FID yet) and sample grids;
- train/<arm>/: any *.json with a throughput key (images_per_s, img_per_s, images_per_sec, throughput) and a
  loss curve from metrics.jsonl / metrics.csv / *.json lists of {"step", "loss"}.
Writes report.md and report/*.png (FID vs NFE, loss curves, timestep densities, sample grids).

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


def mlflow_loss_curve(profile: str, arm: str) -> list[tuple[float, float]]:
    """The 'loss' history of the newest finished MLflow train run of (profile, arm), if tracking is on."""
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
                                  f"tags.`rfpp.arm` = '{arm}'", order_by=["attributes.start_time DESC"],
                                  max_results=1)
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
    """One row per arm × NFE with whatever is known."""
    rows = []
    for arm in config.train.arms:
        throughput = training_throughput(paths.train_dir(arm))
        for nfe in config.sample.nfe:
            fid = _read_json(paths.fid(arm, nfe))
            meta = _read_json(paths.samples(arm, nfe).with_suffix(".json"))
            grid = paths.samples(arm, nfe).with_suffix(".png")
            default = str(paths.samples(arm, nfe))
            scored = str(((fid.get("samples") or {}).get("path") if isinstance(fid, dict) else None) or default)
            paper = PAPER_FID.get(config.profile, {}).get((arm, nfe))
            rows.append({"arm": arm, "nfe": nfe, "fid": fid.get("value") if isinstance(fid, dict) else None,
                         "protocol_id": fid.get("protocol_id") if isinstance(fid, dict) else None,
                         "feature_net": fid.get("protocol", {}).get("feature_net") if isinstance(fid, dict) else None,
                         "straightness": (fid or {}).get("straightness") if isinstance(fid, dict) and
                         fid.get("straightness") is not None else (meta or {}).get("straightness"),
                         "images_per_s": throughput, "paper_fid": paper[0] if paper else None,
                         "paper_note": paper[1] if paper else None, "grid": str(grid) if grid.exists() else None,
                         "t_start": (fid.get("sampling") or {}).get("t_start") if isinstance(fid, dict) else None,
                         "stale": stale_samples(fid),
                         "fid_command": fid_command(config.profile, arm, nfe, scored if scored != default else None),
                         "result": fid})
    return rows


def fid_command(profile: str, arm: str, nfe: int, samples: str | None = None) -> str:
    """The `rfpp fid` command that recomputes a FID from the samples on disk (`samples`: a non-default path)."""
    return f"rfpp fid --profile {profile} --arm {arm} --nfe {nfe}" + (f" --samples {samples}" if samples else "")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _plots(config: Any, paths: Any, rows: list[dict[str, Any]], plot_dir: Path) -> dict[str, Path]:
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
        pts = [(r["nfe"], r["fid"]) for r in rows if r["arm"] == arm and r["fid"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=arm)
            plotted = True
    ax.set_xlabel("NFE")
    ax.set_ylabel("FID")
    ax.set_xscale("log", base=2)
    ax.set_title(f"FID vs NFE ({_feature_net_label(rows)})", fontsize=9)
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no FID results yet", ha="center", transform=ax.transAxes)
    save(fig, "fid_vs_nfe.png")

    curves = {arm: loss_curve(paths.train_dir(arm)) or mlflow_loss_curve(config.profile, arm)
              for arm in config.train.arms}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for arm, pts in curves.items():
            if pts:
                ax.plot(*zip(*pts, strict=True), label=arm)
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
        if r["grid"]:
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


def render(config: Any, rows: list[dict[str, Any]], plots: dict[str, Path], report_path: Path) -> str:
    """The markdown text."""
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
            lines[-1:-1] = [f"**Stale:** the FID of {r['arm']} NFE {r['nfe']} is not of the samples on disk: "
                            f"{r['stale']}; redo it with `{r['fid_command']}`.", ""]
    has_paper = any(r["paper_fid"] is not None for r in rows)
    header = ["arm", "NFE", "FID", "straightness", "train img/s"] + (["paper FID"] if has_paper else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        fid = _fmt(r["fid"]) + (" (stale)" if r["stale"] else "")
        cells = [r["arm"], str(r["nfe"]), fid, _fmt(r["straightness"]), _fmt(r["images_per_s"])]
        if has_paper:
            cells.append(f"{r['paper_fid']} ({r['paper_note']})" if r["paper_fid"] is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if not has_paper:
        lines += ["", f"The paper reports no numbers for the `{config.profile}` profile."]
    if config.profile == "cifar10":
        lines += ["", "The paper's CIFAR-10 ablation ladder (FID at 1 NFE, 50k samples, Inception):", "",
                  "| configuration | FID |", "|---|---|"] + [f"| {name} | {v} |" for name, v in LADDER]
    lines += ["", "## Plots", ""]
    for name, title in (("fid_vs_nfe.png", "FID vs NFE"), ("loss_curves.png", "Training loss"),
                        ("timestep_density.png", "Timestep density per arm")):
        if name in rel:
            lines += [f"### {title}", "", f"![{title}]({rel[name]})", ""]
    if "loss_curves.png" not in rel:
        lines += ["No training loss history was found under train/<arm>/.", ""]
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
                for r in rows) or any(loss_curve(paths.train_dir(arm)) for arm in config.train.arms)
    if not found:
        raise ReportError(f"no results of profile {config.profile!r} under {Path(paths.root).resolve()} (no FID in "
                          "fid/, samples in samples/ or training metrics in train/); make them with `rfpp sample` "
                          "and `rfpp fid` (or the whole pipeline: `snakemake --cores all`), or run `rfpp report` "
                          "from the directory that holds results/")
    plots = _plots(config, paths, rows, out.parent / "report")
    text = render(config, rows, plots, out)
    atomic_write(out, lambda f: f.write(text.encode()))
    return {"report": out, "plots": list(plots.values()),
            "rows": [{k: v for k, v in r.items() if k not in ("result", "grid", "paper_note")} for r in rows],
            "stale": [f"the FID of {r['arm']} NFE {r['nfe']} is stale: {r['stale']}; redo it with `{r['fid_command']}`"
                      for r in rows if r["stale"]]}
