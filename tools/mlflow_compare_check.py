"""Browser check of the MLflow UI's compare page of a profile's arm runs (rfpp.tracking: one run per arm and
training seed of a pipeline run; rfpp.runs: the same comparison in the terminal).

Starts a real `mlflow server` (what `mlflow ui` runs) on the store, opens the compare page of every arm run of
experiment rfpp-<profile> in headless Chromium, and asserts that it shows, for every arm run (a column), FID per NFE
(rows fid_nfe<k>, as the UI rounds them) and the settings that differ between the runs (with "Show diff only": exactly
those rows, each run's value); then saves a screenshot (PNG) of the page. Then opens report.html of the newest
report run in the UI's artifact viewer and checks that it renders with every plot and sample grid loaded (a second
screenshot, <name>-report.png).

    python tools/mlflow_compare_check.py --store sqlite:///mlflow.db --profile digits --screenshot compare.png
    python tools/mlflow_compare_check.py --make-store /tmp/mlflow-check --screenshot compare.png

--make-store first runs the tiny test profile's pipeline (tests/test_workflow.tiny_profile: one training seed, NFE 1
and 2) twice with Snakemake, with train.lr 2e-4 then 4e-4, tracking into <dir>/mlflow.db: four arm runs.

Needs Debian's Chromium and its driver (`apt-get install chromium chromium-driver`; .ci/run installs them) and the
selenium client (the dev extras). No browser or driver is downloaded: both paths are given to Selenium, whose
driver manager is kept offline (SE_OFFLINE). Exit 0 when every check passes, 1 with the first failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_AGENT_HINT": "1",
         "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "SE_OFFLINE": "true"}
LEARNING_RATES = (2e-4, 4e-4)

# The cells on the row of a key, for each element (outside plots) whose own text is the key: every element with text
# of its own that is shown (on screen, not clipped away) and spans the key's vertical centre right of the key, left to
# right. Geometry, not markup: the compare page lays its tables out as tables or as virtualized, positioned grids.
ROW_JS = """
const key = arguments[0];
const own = e => Array.from(e.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
const shown = e => {  // on screen and not covered (a clipped or scrolled-away cell is not shown)
  const b = e.getBoundingClientRect();
  if (!b.width || !b.height) return false;
  const top = document.elementFromPoint((b.left + b.right) / 2, (b.top + b.bottom) / 2);
  return !!top && (top === e || e.contains(top) || top.contains(e));
};
const all = Array.from(document.querySelectorAll('body *')).filter(e => !e.closest('svg') && own(e));
const rows = [];
for (const k of all.filter(e => own(e) === key)) {
  k.scrollIntoView({block: 'center'});
  if (!shown(k)) continue;
  const r = k.getBoundingClientRect();
  const y = (r.top + r.bottom) / 2;
  const cells = all.filter(e => e !== k && !k.contains(e)).map(e => [e, e.getBoundingClientRect()])
    .filter(([e, b]) => b.top <= y && y <= b.bottom && b.left >= r.right - 1 && shown(e))
    .sort((a, b) => a[1].left - b[1].left).map(([e, b]) => own(e));
  rows.push(cells);
}
return rows;
"""


class CheckFailed(AssertionError):
    """The compare page does not show what the store holds."""


def mlflow_number(value: float) -> float:
    """A metric as the compare page shows it (MLflow's Utils.formatMetric): 3 decimals below 10, 2 below 100, else 1;
    exponential (4 significant digits) below 0.001."""
    if value == 0 or not math.isfinite(value):
        return value
    if abs(value) < 0.001:
        return float(f"{value:.3e}")
    scale = 1000 if abs(value) < 10 else 100 if abs(value) < 100 else 10
    return math.floor(value * scale + 0.5) / scale  # JavaScript's Math.round: halves up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(uri: str, log: Path, timeout: float = 180.0, args: tuple[str, ...] = (),
                  cwd: Path | None = None) -> Iterator[str]:
    """`mlflow server` on the store `uri` (localhost, a free port, one worker, `args` added) until the block ends;
    yields its URL."""
    port = free_port()
    env = {**os.environ, **QUIET}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *args],
                                  cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailed(f"mlflow server did not answer /health: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)


@contextlib.contextmanager
def chromium(width: int = 2000, height: int = 2000) -> Iterator[Any]:
    """Headless Debian Chromium under Selenium (the driver and browser from /usr/bin, nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            raise CheckFailed(f"{path} is missing; install Debian's browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _row(driver: Any, key: str, columns: int) -> list[str]:
    """The `columns` cells right of `key` on the page (the first row labelled `key` that has that many)."""
    for cells in driver.execute_script(ROW_JS, key):
        if len(cells) >= columns:
            return cells[:columns]
    return []


def _wait_row(driver: Any, key: str, columns: int, timeout: float = 90.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        cells = _row(driver, key, columns)
        if cells:
            return cells
        if time.monotonic() > deadline:
            raise CheckFailed(f"the compare page shows no row {key!r} with {columns} values; it reads: "
                              f"{driver.find_element('tag name', 'body').text[:1500]!r}")
        time.sleep(0.5)


def _close_assistant(driver: Any) -> None:
    """Close MLflow's assistant side panel if it is open (it narrows the page's tables)."""
    for close in driver.find_elements("css selector", '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        driver.execute_script("arguments[0].click();", close)


def _show_diff_only(driver: Any, section: str) -> None:
    """Turn on the "Show diff only" switch of a section ("Parameters", "Metrics", "Tags") of the compare page."""
    switch = driver.find_element("css selector", f'button[role="switch"][aria-label="{section} - Show diff only"]')
    if switch.get_attribute("aria-checked") != "true":
        driver.execute_script("arguments[0].click();", switch)
    deadline = time.monotonic() + 10
    while switch.get_attribute("aria-checked") != "true":
        if time.monotonic() > deadline:
            raise CheckFailed(f"the {section} 'Show diff only' switch did not turn on")
        time.sleep(0.2)


def check_compare_page(uri: str, profile: str, screenshot: Path, log: Path | None = None) -> dict[str, Any]:
    """Open the MLflow compare page of every arm run of `profile` in the store `uri` and check it against the store
    (rfpp.runs.compare); save a screenshot. Returns what was read: {"url", "runs" (ids, the page's column order),
    "fid" {nfe: [cells]}, "settings" {key: [cells]}, "hidden" (an equal setting the diff view hides)}. Raises
    CheckFailed naming the first difference."""
    from mlflow import MlflowClient

    from rfpp.runs import compare

    comparison = compare(profile, uri)
    if len(comparison.rows) < 2 or not comparison.differing or not comparison.nfes:
        raise CheckFailed(f"the store needs two arm runs with FIDs that differ in a setting; it has "
                          f"{len(comparison.rows)} run(s), differing {comparison.differing}, NFEs {comparison.nfes}")
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(f"rfpp-{profile}")
    ids = [r.run_id for r in comparison.rows]
    by_id = {r.run_id: r for r in comparison.rows}
    log = log or screenshot.with_suffix(".server.log")
    with mlflow_server(uri, log) as base, chromium() as driver:
        url = (f"{base}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
               f"&experiments={urllib.parse.quote(json.dumps([experiment.experiment_id]))}")
        driver.get(url)
        _wait_row(driver, "Run ID:", len(ids))
        _close_assistant(driver)
        columns = _wait_row(driver, "Run ID:", len(ids))
        if sorted(columns) != sorted(ids):
            raise CheckFailed(f"the compare page's columns are runs {columns}, not {ids}")
        fid = {}
        for k in comparison.nfes:
            cells = _wait_row(driver, f"fid_nfe{k}", len(ids))
            for run_id, cell in zip(columns, cells, strict=True):
                want = by_id[run_id].fid.get(k)
                shown = float(cell) if cell not in ("", "-", "NaN") else None
                if want is None and shown is None:
                    continue
                if want is None or shown is None or not math.isclose(shown, mlflow_number(want), rel_tol=1e-9):
                    raise CheckFailed(f"fid_nfe{k} of run {run_id} reads {cell!r} on the page, the store has {want}")
            fid[k] = cells
        names = _wait_row(driver, "Run Name:", len(ids))
        if names != [by_id[i].name for i in columns]:
            raise CheckFailed(f"run names {names} on the page, {[by_id[i].name for i in columns]} in the store")
        _show_diff_only(driver, "Parameters")
        settings = {}
        for key in comparison.differing:
            if key == "code":  # a tag, not a parameter (rfpp.runs shows it as a setting)
                continue
            cells = _wait_row(driver, key, len(ids), timeout=20)
            wanted = [by_id[i].settings.get(key, "") for i in columns]
            if [c.strip() for c in cells] != wanted:
                raise CheckFailed(f"parameter {key} reads {cells} on the page, {wanted} in the store")
            settings[key] = cells
        same = next((k for k in sorted(comparison.rows[0].settings) if k not in comparison.differing
                     and k not in ("code", "seed")), None)
        if same is not None and _row(driver, same, len(ids)):
            raise CheckFailed(f"'Show diff only' still shows parameter {same}, which no run changes")
        for heading in driver.find_elements("xpath", "//*[normalize-space(text())='Run details']")[:1]:
            driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading)  # runs, params, metrics
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(screenshot)):
            raise CheckFailed(f"could not save the screenshot {screenshot}")
    return {"url": url, "runs": columns, "fid": fid, "settings": settings, "hidden": same}


def check_report_page(uri: str, profile: str, screenshot: Path, log: Path | None = None) -> dict[str, Any]:
    """Open report.html of the newest report run of `profile` in the MLflow UI's artifact viewer and check that it
    renders there with every plot and sample grid loaded (as many images as report.md links); save a screenshot.
    Returns {"url", "images": [(alt, width in pixels)]}. Raises CheckFailed."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"rfpp-{profile}")
    runs = client.search_runs([experiment.experiment_id], "tags.`rfpp.stage` = 'report'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
    if not runs:
        raise CheckFailed(f"no report run of profile {profile!r} in {uri}")
    run_id = runs[0].info.run_id
    with tempfile.TemporaryDirectory() as folder:
        markdown = Path(client.download_artifacts(run_id, "report.md", folder)).read_text()
    wanted = len(re.findall(r"!\[[^]]*\]\([^)]+\)", markdown))
    log = log or screenshot.with_suffix(".server.log")
    with mlflow_server(uri, log) as base, chromium(1800, 1400) as driver:
        url = f"{base}/#/experiments/{experiment.experiment_id}/runs/{run_id}/artifacts/report.html"
        driver.get(url)
        deadline, images = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            _close_assistant(driver)
            frames = driver.find_elements("css selector", "iframe")
            if frames:
                driver.switch_to.frame(frames[0])
                images = driver.execute_script("return Array.from(document.images).filter(i => i.complete)"
                                               ".map(i => [i.alt, i.naturalWidth]);")
                heading = driver.execute_script("const h = document.querySelector('h1'); return h && h.textContent;")
                driver.switch_to.default_content()
                if heading and len(images) >= wanted:
                    break
            time.sleep(0.5)
        if not wanted or len(images) != wanted or not all(width > 0 for _, width in images):
            raise CheckFailed(f"report.html in the MLflow UI shows images {images}; report.md links {wanted}")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return {"url": url, "images": [tuple(i) for i in images]}


def make_store(folder: Path, learning_rates: tuple[float, ...] = LEARNING_RATES, timeout: int = 900) -> str:
    """The tiny profile's pipeline (tests/test_workflow.tiny_profile) run by Snakemake in `folder`/work once per
    train.lr of `learning_rates`, tracking into `folder`/mlflow.db; a copy of each run's FID jsons is kept in
    `folder`/fid-lr<lr>/ (the next run rewrites results/tiny/fid/). Returns the store's URI."""
    import shutil

    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from test_workflow import tiny_profile
    from workflow_helpers import SNAKEMAKE, env, make_workspace

    profile = tiny_profile()
    work = make_workspace(folder, {"tiny": profile})
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    for lr in learning_rates:
        profile["train"]["lr"] = lr
        (work / "params" / "tiny.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
        proc = subprocess.run([SNAKEMAKE, "--cores", "2", "--config", "profile=tiny"], cwd=work, capture_output=True,
                              text=True, timeout=timeout, env={**env(), **QUIET, "RFPP_TRACKING": "on",
                                                               "MLFLOW_TRACKING_URI": uri})
        if proc.returncode != 0:
            raise CheckFailed(f"the tiny pipeline (train.lr={lr}) failed: {proc.stderr[-3000:]}")
        shutil.copytree(work / "results" / "tiny" / "fid", folder / f"fid-lr{lr}", ignore=shutil.ignore_patterns(
            "*.lock", "*.npz"))
    return uri


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="the MLflow store (e.g. sqlite:///mlflow.db) holding the arm runs")
    where.add_argument("--make-store", type=Path, metavar="DIR", help="run the tiny pipeline twice into DIR first")
    parser.add_argument("--profile", default="tiny", help="the profile whose arm runs to compare (default tiny)")
    parser.add_argument("--screenshot", type=Path, default=Path("mlflow-compare.png"), help="the PNG to write")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        uri = args.store or make_store(args.make_store)
        seen = check_compare_page(uri, args.profile, args.screenshot)
        report = check_report_page(uri, args.profile, args.screenshot.with_name(f"{args.screenshot.stem}-report.png"))
    except CheckFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"ok: {seen['url']}\n  runs {seen['runs']}\n  FID per NFE {seen['fid']}\n  differing settings "
          f"{seen['settings']}\n  hidden by 'Show diff only': {seen['hidden']}\n  screenshot {args.screenshot}\n"
          f"report.html in the UI: {len(report['images'])} images loaded ({report['url']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
