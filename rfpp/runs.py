"""The arm runs of a profile side by side, from the MLflow store (what `rfpp runs` prints, and what the MLflow UI's
"Compare" of the same runs shows): one row per arm run (rfpp.tracking: one per arm, training seed and recipe of a
pipeline run), the settings that differ between the rows, and FID per NFE (metrics ``fid_nfe<k>``, the FID json's
value).

A setting is a parameter of the arm run (rfpp.tracking.arm_recipe: ``arm.loss``, ``train.lr``, ``seed`` …) or the
code version (tag ``rfpp.code_version``, or ``rfpp.code_versions`` when its stages ran on several; shown as
``code``); a setting missing from a row differs from any value.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from rfpp.tracking import ARM_RUN_TAG, tracking_uri

CODE = "code"  # the pseudo-setting of the code version


class RunsError(RuntimeError):
    """No arm run to show: the store or the profile's experiment is missing (the message says what to do)."""


@dataclass
class Row:
    """One arm run: its id and name, arm, training seed, start time (ms since the epoch), settings and FIDs."""

    run_id: str
    name: str
    arm: str
    seed: str
    start_time: int
    settings: dict[str, str]
    fid: dict[int, float]
    group: str = ""


@dataclass
class Comparison:
    """Arm runs of one experiment: `rows` in start order, `differing` the settings whose values are not all the
    same (sorted; ``seed`` is a column of its own), `nfes` every NFE with a FID in some row (ascending)."""

    profile: str
    uri: str
    rows: list[Row]
    differing: list[str] = field(default_factory=list)
    nfes: list[int] = field(default_factory=list)


def _row(run: Any) -> Row:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    fid = {int(m.group(1)): float(v) for k, v in metrics.items() if (m := re.fullmatch(r"fid_nfe(\d+)", k))}
    settings = dict(params)
    settings[CODE] = tags.get("rfpp.code_versions") or tags.get("rfpp.code_version", "")
    return Row(run.info.run_id, run.info.run_name or "", tags.get("rfpp.arm", ""), tags.get("rfpp.seed", ""),
               int(run.info.start_time or 0), settings, fid, tags.get("rfpp.group", ""))


def compare(profile: str, uri: str | None = None) -> Comparison:
    """The arm runs of experiment ``rfpp-<profile>`` in the store at `uri` (default: rfpp.tracking.tracking_uri)
    compared. RunsError when the experiment does not exist or has no arm run."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri = uri or tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    name = f"rfpp-{profile}"
    try:
        experiment = client.get_experiment_by_name(name)
    except Exception as err:  # noqa: BLE001 - an unreadable store: one line naming it
        raise RunsError(f"cannot read the MLflow store {uri!r} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                        "set MLFLOW_TRACKING_URI (or --uri) to the store the pipeline logged to") from None
    if experiment is None:
        raise RunsError(f"no experiment {name!r} in the MLflow store {uri!r}; run the pipeline of profile {profile!r} "
                        "with tracking on, or point MLFLOW_TRACKING_URI (or --uri) at the store it logged to")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], f"tags.`{ARM_RUN_TAG}` = '1'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            break
    if not runs:
        raise RunsError(f"experiment {name!r} in {uri!r} has no arm run (runs tagged {ARM_RUN_TAG}); they are made "
                        "by the train, sample and fid stages with tracking on")
    rows = sorted((_row(r) for r in runs), key=lambda r: (r.start_time, r.run_id))
    keys = sorted({k for r in rows for k in r.settings})
    differing = [k for k in keys if k != "seed" and len({r.settings.get(k) for r in rows}) > 1]
    nfes = sorted({k for r in rows for k in r.fid})
    return Comparison(profile, uri, rows, differing, nfes)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def table(comparison: Comparison) -> list[list[str]]:
    """The comparison as rows of cells, the header first: run, id (8 characters), started (UTC), arm, seed, the
    differing settings, then ``FID@<k>`` per NFE."""
    header = ["run", "id", "started (UTC)", "arm", "seed", *comparison.differing,
              *(f"FID@{k}" for k in comparison.nfes)]
    lines = [header]
    for r in comparison.rows:
        started = datetime.datetime.fromtimestamp(r.start_time / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append([r.name, r.run_id[:8], started, r.arm, r.seed,
                      *(r.settings.get(k, "—") for k in comparison.differing),
                      *(_number(r.fid.get(k)) for k in comparison.nfes)])
    return lines


def format_table(comparison: Comparison) -> str:
    """The comparison as aligned plain text: a title line naming the experiment and store, then `table`."""
    cells = table(comparison)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    same = "" if comparison.differing else "; no setting differs between them"
    title = (f"{len(comparison.rows)} arm run(s) of experiment rfpp-{comparison.profile} in {comparison.uri}"
             f"{same}")
    body = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([title, *body]) + "\n"
