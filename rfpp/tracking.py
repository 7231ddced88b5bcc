"""MLflow tracking for every stage run: one experiment per profile, one run per arm and training seed (the unit of
comparison, the paper's Table 1 row), one run per stage invocation.

Layout in MLflow (robust across processes; every stage is its own process under Snakemake/DVC):

- experiment ``rfpp-<profile>``;
- one *parent* run per session, found by a tag search (``rfpp.parent = "1"``, ``rfpp.profile``,
  ``rfpp.group``) or created if absent. The group defaults to the absolute ``results/<profile>``
  directory (override with ``RFPP_TRACKING_GROUP`` or ``start_run(..., group=...)``); the parent is
  marked FINISHED at once and only groups its children. If two processes create it concurrently,
  both then pick the earliest (start time, run id) and an empty duplicate is deleted;
- one *arm run* per (arm, training seed, recipe) under the parent, named ``<arm>-seed<k>``, tagged ``rfpp.arm_run``
  = "1", ``rfpp.arm``, ``rfpp.seed`` and ``rfpp.recipe`` (a hash of its parameters). Its
  parameters are that arm's resolved recipe and nothing of other arms (``arm_recipe``: ``arm.*``, ``seed``,
  ``train.*``, ``teacher.*``, ``pairs.*``, ``data.*``, ``sample.*`` but the NFEs, ``eval.*``), so that "Compare"
  of arm runs shows exactly the settings that differ. Its metrics are what the stages report with
  ``log_summary`` as they finish: ``fid_nfe<k>``, ``straightness_nfe<k>``, ``train_images_per_s``, ``final_loss*``.
  The train, sample and fid stage runs of that arm and seed (``stage_run`` with an arm of ``train.arms`` and a
  seed) nest under it; a pipeline run with another recipe (``train.lr=…``) makes new arm runs beside the old ones
  in the same experiment (the same recipe on other code joins it and lists both in ``rfpp.code_versions``). Found
  by a tag search or created, like the parent;
- one *child* run per stage invocation, tagged ``mlflow.parentRunId`` (the UI nests it under its arm run or the
  parent), ``rfpp.profile``, ``rfpp.stage``, ``rfpp.arm`` and ``rfpp.seed`` (where there are), ``rfpp.group``,
  ``rfpp.code_version`` (``<rfpp.__version__>+<git sha>[-dirty]`` or ``+unknown``) and
  ``mlflow.source.git.commit``, and ``rfpp.host``, ``rfpp.pid``, ``rfpp.pid_start`` (the process's start
  time, /proc/<pid>/stat field 22). Select arm runs in the UI and "compare" (``rfpp runs`` prints the same table).
- every run records the git commit (``mlflow.source.git.commit``), whether the tree was dirty (``rfpp.git_dirty``)
  and the profile file and its sha256 (``rfpp.profile_file``, ``rfpp.profile_sha256``: the file named by the
  command's ``--profile``, else params/<profile>.yaml).
- a stage killed with SIGKILL cannot end its run: every stage that starts a run first marks KILLED the
  RUNNING runs of its experiment that were started on this host by a process that is now dead (gone, a
  zombie, or its pid reused by a process with another start time).

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise MLflow's own default, i.e. exactly
the store that ``mlflow ui`` / ``mlflow server`` opens without arguments in the same directory
(``sqlite:///mlflow.db`` in the current directory in MLflow 3; artifacts of runs logged straight
to that store go to ``./mlruns/``, artifacts uploaded through a server to ``./mlartifacts/``).
``RFPP_TRACKING=off`` turns every call into a no-op (``run.run_id`` is then None).

Every stage opens its run through ``stage_run`` (the run, with the resolved configuration logged as parameters and
as ``config.yaml``); ``start_run`` is the bare run underneath.

Metrics are buffered and sent with ``log_batch`` every ``RFPP_TRACKING_FLUSH_SECS`` seconds
(default 15) or 1000 values, and at the end of the run. Once a run has started, tracking failures
never reach the caller: the first is logged as a warning and later calls keep trying (after a pause).
A store that cannot be used at start raises ``TrackingError`` naming the URI and the fix.

Find-or-create of the parent and of an arm run is race-free on a SQLite store (an flock on ``<db>.lock`` around it,
one process at a time); on a server, each process creates, then all take the earliest match (start time, run id)
and an empty duplicate is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

import rfpp

# Keep MLflow offline and quiet: no usage telemetry, no agent hints. Set before mlflow is imported
# (its telemetry client starts at import); an explicit user setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_AGENT_HINT", "1")

__all__ = ["ARM_RUN_TAG", "NullRun", "TrackedRun", "TrackingError", "arm_recipe", "code_version", "stage_run",
           "start_run", "tracking_enabled", "tracking_uri"]

_log = logging.getLogger(__name__)

ENV_SWITCH = "RFPP_TRACKING"
ENV_GROUP = "RFPP_TRACKING_GROUP"
ENV_FLUSH_SECS = "RFPP_TRACKING_FLUSH_SECS"
_OFF = {"off", "0", "false", "no", "disabled", "none"}

MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE = 6000  # MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
_MAX_BUFFER = 100_000  # metrics kept while the store is unreachable
_RETRY_PAUSE_S = 60.0
ARM_RUN_TAG = "rfpp.arm_run"  # "1" on arm runs (rfpp.runs selects them by it)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the one-line message names the URI and how to fix it (the CLI prints it
    as one line and exits 1, cli/main.py)."""


def tracking_enabled() -> bool:
    """False when ``RFPP_TRACKING`` is off/0/false/no."""
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in _OFF


def _mlflow() -> Any:
    import mlflow

    return mlflow


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else MLflow's default (what ``mlflow ui`` opens here), absolute."""
    return _mlflow().get_tracking_uri()


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str, bool]:
    """(commit sha or 'unknown', dirty) of the working tree holding the rfpp package."""
    root = Path(rfpp.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    if not re.fullmatch(r"[0-9a-f]{40,64}", sha):
        return "unknown", False
    return sha, bool(status.strip())


def code_version() -> str:
    """``<rfpp.__version__>+<12-char git sha>[-dirty]``, or ``<version>+unknown`` outside git."""
    sha, dirty = _git_state()
    if sha == "unknown":
        return f"{rfpp.__version__}+unknown"
    return f"{rfpp.__version__}+{sha[:12]}{'-dirty' if dirty else ''}"


def _profile_file(profile: str) -> Path | None:
    """The profile file this process read: the command line's ``--profile``/``-p`` value (an rfpp command), else
    params/<profile>.yaml (rfpp.config.profile_path); None when neither is a file."""
    from rfpp.config import profile_path

    args, given = sys.argv[1:], []
    for i, arg in enumerate(args):
        if arg in ("--profile", "-p") and i + 1 < len(args):
            given.append(args[i + 1])
        elif arg.startswith("--profile="):
            given.append(arg.split("=", 1)[1])
    for name in [*given, profile]:
        with contextlib.suppress(OSError, ValueError):
            path = profile_path(name)
            if path.is_file():
                return path.resolve()
    return None


def provenance_tags(profile: str) -> dict[str, str]:
    """What every run records of the code and the profile: ``mlflow.source.git.commit``, ``rfpp.git_dirty``
    ("true"/"false"), ``rfpp.code_version``, ``rfpp.profile_file`` and ``rfpp.profile_sha256`` (empty when the
    profile file is not found)."""
    sha, dirty = _git_state()
    path = _profile_file(profile)
    digest = ""
    if path is not None:
        with contextlib.suppress(OSError):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"mlflow.source.git.commit": sha, "rfpp.git_dirty": str(dirty).lower(), "rfpp.code_version": code_version(),
            "rfpp.profile_file": str(path or ""), "rfpp.profile_sha256": digest}


def arm_recipe(config: Any, arm: str | None, seed: int | None) -> dict[str, str] | None:
    """The parameters of the arm run of (`arm`, training `seed`): the arm's resolved recipe and nothing of the other
    arms. ``arm.timesteps``, ``arm.a``, ``arm.loss``, ``arm.huber_c``, ``arm.init`` and ``arm.batch`` (the arm's
    batch, else train.batch), ``seed`` (the training seed), every other ``train.*`` key but ``arms``, ``seeds`` and
    ``batch``, and the whole ``teacher``, ``pairs``, ``data``, ``sample`` (but ``nfe``: one job's NFE is not a
    setting of the arm) and ``eval`` sections, flattened to dotted keys with string values. None when `arm` is not
    one of the configuration's train.arms (a foreign checkpoint) or `seed` is None."""
    try:
        values = _config_dict(config)
        train = dict(values.get("train") or {})
        arms = train.get("arms") or {}
    except Exception:  # noqa: BLE001 - a configuration of another shape has no arms
        return None
    if arm is None or seed is None or arm not in arms:
        return None
    settings = dict(arms[arm])
    settings["batch"] = settings.get("batch") or train.get("batch")
    recipe: dict[str, Any] = {"arm": settings, "seed": int(seed),
                              "train": {k: v for k, v in train.items() if k not in ("arms", "seeds", "batch")}}
    for section in ("teacher", "pairs", "data", "sample", "eval"):
        part = dict(values.get(section) or {})
        part.pop("nfe", None) if section == "sample" else None
        recipe[section] = part
    return flatten(recipe)


def _recipe_key(recipe: Mapping[str, str]) -> str:
    """What identifies an arm run within a session: its parameters (16 hex digits). Not the code's commit: a commit
    made while a pipeline runs would split its arm runs; an arm run whose stages ran on several code versions says
    so (``rfpp.code_versions``)."""
    return hashlib.sha256(json.dumps(dict(sorted(recipe.items()))).encode()).hexdigest()[:16]


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {dotted.key: str(value)}; an empty mapping stays as '{}'."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, Mapping):
            out[name] = "{}"
        elif isinstance(value, tuple):
            out[name] = str(list(value))
        else:
            out[name] = str(value)
    return out


def _key(name: str) -> str:
    """A valid MLflow key: allowed characters only, at most 250 of them."""
    return re.sub(r"[^\w\-. /:]", "_", str(name))[:MAX_KEY]


def _config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _config_yaml(config: Any) -> str:
    if hasattr(config, "to_yaml"):
        return config.to_yaml()
    return yaml.safe_dump(_config_dict(config), sort_keys=False)


class NullRun:
    """What ``start_run`` yields when tracking is off: accepts every call, records nothing."""

    run_id: str | None = None
    parent_run_id: str | None = None
    arm_run_id: str | None = None
    experiment_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """No-op."""

    def log_config(self, config: Any, params: Mapping[str, Any] | None = None) -> None:
        """No-op."""

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """No-op."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """No-op."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """No-op."""

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """No-op."""

    def log_image_file(self, png_path: str | os.PathLike[str], artifact_path: str | None = "samples") -> None:
        """No-op."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """No-op."""

    def flush(self) -> None:
        """No-op."""


class TrackedRun(NullRun):
    """One live MLflow run; every method swallows tracking failures (warned once)."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, parent_run_id: str | None,
                 flush_secs: float = 15.0, arm_run_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id  # the run this one nests under: its arm run, else the session parent
        self.arm_run_id = arm_run_id
        self.flush_secs = flush_secs
        self._buffer: list[Any] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._paused_until = 0.0
        self._warned = False
        self.failures = 0
        self.dropped = 0

    # -- failure handling -------------------------------------------------------------------------
    def _failed(self, what: str, err: BaseException) -> None:
        self.failures += 1
        self._paused_until = time.monotonic() + _RETRY_PAUSE_S
        if not self._warned:
            self._warned = True
            _log.warning("MLflow tracking failed (%s) for run %s: %s: %s; the run goes on, later tracking "
                         "calls keep trying", what, self.run_id, type(err).__name__, err)

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:  # never crash the caller once the run is up
            self._failed(what, err)
            return False

    # -- API --------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested → dotted) parameters; values are truncated to MLflow's limit."""
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(_key(k), v[:MAX_PARAM_VALUE]) for k, v in flat.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._guard("log_params", self.client.log_batch, self.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH],
                        synchronous=True)

    def log_config(self, config: Any, params: Mapping[str, Any] | None = None) -> None:
        """Log the resolved config as the artifact ``config.yaml`` and as dotted params (`params` instead, when
        given: an arm's stage run logs its arm's recipe)."""
        try:
            values = _config_dict(config) if params is None else params
            text = _config_yaml(config)
        except Exception as err:
            self._failed("log_config", err)
            return
        self.log_params(values)
        self.log_text(text, "config.yaml")

    def log_text(self, text: str, artifact_file: str) -> None:
        """Upload `text` as the artifact `artifact_file` (a path inside the run's artifacts, e.g. ``report.html``)."""
        with tempfile.TemporaryDirectory(prefix="rfpp-mlflow-") as tmp:
            path = Path(tmp) / posixpath.basename(artifact_file)
            path.write_text(text, encoding="utf-8")
            self.log_artifact(path, posixpath.dirname(artifact_file) or None)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Send now, at step 0, metrics of the arm run (the unit of comparison: ``fid_nfe<k>``,
        ``straightness_nfe<k>``, ``train_images_per_s``, ``final_loss``…); a run without an arm run takes them
        itself. A value logged again replaces the one shown (MLflow shows the latest)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            try:
                entries.append(Metric(_key(key), float(value), now, 0))
            except (TypeError, ValueError) as err:
                self._failed(f"metric {key!r} is not a number", err)
        if entries:
            self._guard("log_summary", self.client.log_batch, self.arm_run_id or self.run_id, metrics=entries,
                        synchronous=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer metrics (cheap); they are sent in batches every few seconds and at the end."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError) as err:
                self._failed(f"metric {key!r} is not a number", err)
                continue
            name = _key(key)
            if not name or posixpath.normpath(name) != name or name.startswith(("/", "..")):
                self._failed(f"metric name {key!r}", ValueError("MLflow rejects names that resolve as other paths"))
                continue
            entries.append(Metric(name, number, now, int(step or 0)))
        with self._lock:
            self._buffer.extend(entries)
            if len(self._buffer) > _MAX_BUFFER:
                self.dropped += len(self._buffer) - _MAX_BUFFER
                del self._buffer[: len(self._buffer) - _MAX_BUFFER]
            due = len(self._buffer) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._last_flush >= self.flush_secs
        if due and time.monotonic() >= self._paused_until:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics now (what failed stays buffered for a later try)."""
        with self._lock:
            pending, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        for i in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[i:i + MAX_METRICS_PER_BATCH]
            if not self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=chunk, synchronous=True):
                with self._lock:
                    self._buffer[:0] = pending[i:]
                return

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file (or a directory's contents) under ``artifact_path``."""
        local = Path(path)
        if local.is_dir():
            self._guard("log_artifacts", self.client.log_artifacts, self.run_id, str(local), artifact_path)
        elif local.is_file():
            self._guard("log_artifact", self.client.log_artifact, self.run_id, str(local), artifact_path)
        else:
            self._failed("log_artifact", FileNotFoundError(str(local)))

    def log_image_file(self, png_path: str | os.PathLike[str], artifact_path: str | None = "samples") -> None:
        """Upload an image file (shown in the UI's artifact viewer) under ``samples/`` by default."""
        self.log_artifact(png_path, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values truncated to MLflow's limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(_key(k), str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._guard("set_tags", self.client.log_batch, self.run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH],
                        synchronous=True)

    def end(self, status: str) -> None:
        """Flush and terminate with FINISHED, FAILED or KILLED."""
        self._paused_until = 0.0
        self.flush()
        if self.dropped:
            self.set_tags({"rfpp.tracking_dropped_metrics": self.dropped})
        self._guard("set_terminated", self.client.set_terminated, self.run_id, status)
        if self.arm_run_id and status == "FINISHED":  # the arm run's end time: its latest stage's
            self._guard("set_terminated", self.client.set_terminated, self.arm_run_id, "FINISHED")


# -- start ----------------------------------------------------------------------------------------
def _unusable(uri: str, err: BaseException | str) -> TrackingError:
    """One line: the store, why (the error's first line; SQLAlchemy appends the SQL and a link), and the fixes."""
    detail = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else err
    detail = (detail.strip().splitlines() or [""])[0][:300]
    db = _sqlite_file(uri)
    move = f", or move the damaged store {db} away (a new one is made)" if db is not None and db.exists() else ""
    return TrackingError(
        f"MLflow tracking URI {uri!r} is unusable ({detail}). Set MLFLOW_TRACKING_URI to a reachable store "
        f"(e.g. sqlite:///mlflow.db or http://host:5000) or disable tracking with {ENV_SWITCH}=off{move}.")


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _probe_http(uri: str) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
            pass
    except urllib.error.HTTPError:
        return  # the server answers (maybe behind a proxy or auth); let MLflow judge
    except (OSError, ValueError) as err:
        raise _unusable(uri, err) from err


def _retry(fn: Any, attempts: int = 3) -> Any:
    """Retry a start-up call (concurrent stages may race on a fresh SQLite file)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (i + 1))
    return None


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags={"rfpp.experiment": "1"})
    except Exception:
        experiment = client.get_experiment_by_name(name)  # created meanwhile by another stage
        if experiment is None:
            raise
        return experiment.experiment_id


def _quote(value: str) -> str:
    """A string literal for MLflow's search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _find_or_create(client: Any, experiment_id: str, query: str, create: Any) -> str:
    """The earliest (start time, run id) run of the experiment matching `query`; else ``create()``'s (a run id,
    the run complete and terminated). Two processes that create concurrently both end with the earliest; a
    duplicate that nobody attached to is deleted."""

    def find() -> list[Any]:
        runs = client.search_runs([experiment_id], filter_string=query, max_results=100)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = find()
    if found:
        return found[0].info.run_id
    mine = create()
    found = find()
    canonical = found[0].info.run_id if found else mine
    if canonical != mine:  # lost a creation race: drop ours if nobody attached to it
        with contextlib.suppress(Exception):
            children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{mine}'", max_results=1)
            if not children:
                client.delete_run(mine)
    return canonical


def _parent_run_id(client: Any, experiment_id: str, profile: str, group: str, tags: dict[str, str]) -> str:
    """The session parent of (profile, group): found by its tags or created (FINISHED at once: it only groups)."""
    query = (f"tags.`rfpp.parent` = '1' and tags.`rfpp.profile` = {_quote(profile)} "
             f"and tags.`rfpp.group` = {_quote(group)}")

    def create() -> str:
        name = f"{profile} @ {Path(group).name}" if os.sep in group else f"{profile} @ {group}"
        run_id = client.create_run(experiment_id, run_name=name, tags={**tags, "rfpp.parent": "1"}).info.run_id
        client.set_terminated(run_id, "FINISHED")
        return run_id

    return _find_or_create(client, experiment_id, query, create)


def _arm_run_id(client: Any, experiment_id: str, parent: str, arm: str, seed: int, recipe: Mapping[str, str],
                tags: dict[str, str]) -> str:
    """The arm run of (arm, seed, recipe) under the session parent `parent`: found by its tags (``rfpp.recipe``:
    the recipe's hash) or created with the recipe as its parameters (FINISHED; each stage that finishes under it
    moves its end time). A stage of another code version than the arm run's creator adds both to the arm run's tag
    ``rfpp.code_versions`` (comma-separated, sorted)."""
    key = _recipe_key(recipe)
    query = (f"tags.`{ARM_RUN_TAG}` = '1' and tags.`mlflow.parentRunId` = '{parent}' and "
             f"tags.`rfpp.arm` = {_quote(arm)} and tags.`rfpp.seed` = '{int(seed)}' and tags.`rfpp.recipe` = '{key}'")

    def create() -> str:
        from mlflow.entities import Param

        run_tags = {**tags, ARM_RUN_TAG: "1", "mlflow.parentRunId": parent, "rfpp.arm": arm, "rfpp.seed": str(seed),
                    "rfpp.recipe": key}
        run_id = client.create_run(experiment_id, run_name=f"{arm}-seed{seed}", tags={
            _key(k): str(v)[:MAX_TAG_VALUE] for k, v in run_tags.items()}).info.run_id
        items = [Param(_key(k), str(v)[:MAX_PARAM_VALUE]) for k, v in recipe.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH], synchronous=True)
        client.set_terminated(run_id, "FINISHED")
        return run_id

    run_id = _find_or_create(client, experiment_id, query, create)
    ours = tags.get("rfpp.code_version", "")
    known = client.get_run(run_id).data.tags
    versions = set(filter(None, known.get("rfpp.code_versions", known.get("rfpp.code_version", "")).split(",")))
    if ours and ours not in versions:
        client.set_tag(run_id, "rfpp.code_versions", ",".join(sorted(versions | {ours})))
    return run_id


def _process_tags() -> dict[str, str]:
    """rfpp.host, rfpp.pid and rfpp.pid_start (the start time, /proc/<pid>/stat field 22) of this process: what
    `_end_dead_runs` checks later."""
    from rfpp.lifeline import start_time

    return {"rfpp.host": socket.gethostname(), "rfpp.pid": str(os.getpid()),
            "rfpp.pid_start": str(start_time(os.getpid()) or "")}


def _end_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the experiment that a process on this host started and that process is dead
    (gone, a zombie, or its pid now another process's: another start time); returns their run ids.

    A stage killed with SIGKILL cannot end its own run; the next stage that starts one does. Runs of other hosts
    (whose processes cannot be seen from here) and runs without these tags are left as they are.
    """
    from rfpp.lifeline import alive

    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`rfpp.host` = {_quote(host)}"
    ended = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        tags = run.data.tags
        pid, recorded = tags.get("rfpp.pid", ""), tags.get("rfpp.pid_start", "")
        if not pid.isdigit() or alive(f"{pid}:{recorded}"):  # alive: the pid lives with the recorded start time
            continue
        client.set_tag(run.info.run_id, "rfpp.error",
                       f"process {pid} on {host} died without ending this run (kill -9, out of memory, a crash); "
                       "marked KILLED when the next stage started")
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        _log.info("marked %d MLflow run(s) of dead processes KILLED: %s", len(ended), ", ".join(ended))
    return ended


def _default_group(profile: str) -> str:
    from rfpp.paths import ProfilePaths

    return os.environ.get(ENV_GROUP) or str(ProfilePaths.of(profile).root.resolve())


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, one process at a time (an flock on <db>.lock): stages started together on a store
    that does not exist yet would otherwise race to create its tables (alembic: "Online migration expected
    to match one row"), and to create the parent or an arm run. Other stores: no lock."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _begin(config: Any, stage: str, arm: str | None, run_name: str | None, tags: Mapping[str, Any] | None,
           group: str | None, seed: int | None = None, recipe: Mapping[str, str] | None = None) -> TrackedRun:
    mlflow = _mlflow()
    uri = tracking_uri()
    profile = str(getattr(config, "profile", None) or _config_dict(config).get("profile", "default"))
    group = group or _default_group(profile)
    common = {"rfpp.profile": profile, "rfpp.group": group, "rfpp.version": rfpp.__version__,
              **provenance_tags(profile)}
    with contextlib.suppress(Exception):
        common["mlflow.user"] = getpass.getuser()
    _probe_http(uri)
    try:
        with _store_lock(uri):  # schema creation, then find-or-create of parent and arm run: one process at a time
            client = mlflow.MlflowClient(tracking_uri=uri)
            experiment_id = _retry(lambda: _experiment_id(client, f"rfpp-{profile}"))
            parent = _retry(lambda: _parent_run_id(client, experiment_id, profile, group, common))
            arm_run = None
            if recipe is not None and arm is not None and seed is not None:
                arm_run = _retry(lambda: _arm_run_id(client, experiment_id, parent, arm, seed, recipe, common))
        _retry(lambda: _end_dead_runs(client, experiment_id))
        run_tags = {**common, **_process_tags(), "rfpp.stage": stage, "mlflow.parentRunId": arm_run or parent,
                    "mlflow.source.name": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:MAX_TAG_VALUE] or stage,
                    "mlflow.source.type": "LOCAL"}
        if arm is not None:
            run_tags["rfpp.arm"] = arm
        if seed is not None:
            run_tags["rfpp.seed"] = str(seed)
        run_tags.update({k: str(v) for k, v in (tags or {}).items()})
        name = run_name or "-".join([stage, *([arm] if arm else []), *([f"seed{seed}"] if seed is not None else [])])
        run = _retry(lambda: client.create_run(
            experiment_id, run_name=name, tags={_key(k): str(v)[:MAX_TAG_VALUE] for k, v in run_tags.items()}))
    except TrackingError:
        raise
    except Exception as err:
        raise _unusable(uri, err) from err
    flush_secs = float(os.environ.get(ENV_FLUSH_SECS, "15"))
    return TrackedRun(client, run.info.run_id, experiment_id, arm_run or parent, flush_secs=flush_secs,
                      arm_run_id=arm_run)


@contextlib.contextmanager
def start_run(config: Any, stage: str, arm: str | None = None, run_name: str | None = None,
              tags: Mapping[str, Any] | None = None, group: str | None = None,
              seed: int | None = None, recipe: Mapping[str, str] | None = None) -> Iterator[NullRun]:
    """Open one MLflow run for a stage invocation: a child of the profile's session parent, or, given the `recipe`
    of (`arm`, `seed`) (``arm_recipe``), a child of that arm run (found or created).

    Yields a ``TrackedRun`` (or a ``NullRun`` with ``RFPP_TRACKING=off``). The run ends FINISHED,
    FAILED when the block raises (tag ``rfpp.error``), KILLED on KeyboardInterrupt. Raises
    ``TrackingError`` at start if the store cannot be used.
    """
    if not tracking_enabled():
        yield NullRun()
        return
    run = _begin(config, stage, arm, run_name, tags, group, seed, recipe)
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException as err:
        if _clean_exit(err):
            run.end("FINISHED")
        else:
            message = getattr(err, "rfpp_message", None)  # the CLI's fail(): its message, not "Exit: 1"
            run.set_tags({"rfpp.error": message or f"{type(err).__name__}: {err}"})
            run.end("FAILED")
        raise
    else:
        run.end("FINISHED")


@contextlib.contextmanager
def stage_run(config: Any, stage: str, arm: str | None = None, run_name: str | None = None,
              tags: Mapping[str, Any] | None = None, enabled: bool = True, seed: int | None = None
              ) -> Iterator[NullRun]:
    """The one way a stage opens its MLflow run: ``start_run`` with the resolved configuration logged (a stage of
    one training seed passes that seed's, Config.for_training_seed: parameter ``seed``, tag ``rfpp.seed``, run
    name ``<stage>-<arm>-seed<k>``). A stage of an arm of train.arms and a training seed nests under that arm
    run and logs the arm's recipe (``arm_recipe``) as its parameters (the whole configuration is its
    ``config.yaml``; a sample or fid stage adds its ``nfe``); other stages log the whole configuration. With
    ``enabled`` False (a process other than rank 0) or ``RFPP_TRACKING=off`` it yields a ``NullRun``."""
    if not enabled or not tracking_enabled():
        yield NullRun()
        return
    recipe = arm_recipe(config, arm, seed)
    with start_run(config, stage=stage, arm=arm, run_name=run_name, tags=tags, seed=seed, recipe=recipe) as run:
        run.log_config(config, params=recipe)
        yield run


def _clean_exit(err: BaseException) -> bool:
    """SystemExit(0) / typer.Exit(0) end a stage normally."""
    if isinstance(err, SystemExit):
        return err.code in (0, None)
    return getattr(err, "exit_code", None) == 0
