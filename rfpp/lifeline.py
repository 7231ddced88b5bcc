"""Child processes die with the run that started them.

A stage started by Snakemake runs in a shell that Snakemake started; when Snakemake is killed (kill -9 included) the
shell and the stage would live on as orphans and race the next run. The workflow exports RFPP_PARENT_PID (the pid of
the Snakemake process, with its start time) and every `rfpp` process watches it; a torchrun worker also watches its
launcher (its parent). When a watched process is gone, the stage gets SIGTERM, which the CLI turns into an ordinary
exception: `finally` blocks run and its MLflow run ends KILLED. Processes that rfpp itself starts get
PR_SET_PDEATHSIG (`child_preexec`), so they die with it too; DataLoader workers already watch their parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from pathlib import Path

ENV_PARENT = "RFPP_PARENT_PID"
POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot, /proc/<pid>/stat field 22), or None when it is gone
    or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def anchor_value(pid: int | None = None) -> str:
    """'<pid>:<start time>' of `pid` (default: this process), the value of RFPP_PARENT_PID."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{start_time(pid)}"


def alive(anchor: str) -> bool:
    """Whether the process named by an anchor '<pid>:<start time>' (or a plain pid) still runs."""
    pid_text, _, started = anchor.partition(":")
    now = start_time(int(pid_text))
    return now is not None and (not started or started == "None" or str(now) == started)


def _watch(anchors: list[str]) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_SECONDS):
        gone = [a for a in anchors if not alive(a)]
        if gone:
            print(f"rfpp: the process that started this one (pid {gone[0].split(':')[0]}) is gone; stopping",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def install() -> list[str]:
    """Watch RFPP_PARENT_PID and, inside torchrun, the launcher; SIGTERM ends the stage like Ctrl-C. Returns the
    anchors watched (none: nothing is installed)."""
    anchors = []
    if os.environ.get(ENV_PARENT):
        anchors.append(os.environ[ENV_PARENT])
    if "LOCAL_RANK" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ:
        anchors.append(anchor_value(os.getppid()))
    anchors = [a for a in anchors if a.split(":")[0].isdigit()]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    if anchors:
        threading.Thread(target=_watch, args=(anchors,), name="rfpp-lifeline", daemon=True).start()
    return anchors


def child_preexec() -> None:
    """For subprocess.Popen(preexec_fn=…): the child gets SIGTERM when this process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
