"""A one-node Slurm on this machine, for tests and for trying the cluster path: munged, slurmctld and slurmd on
localhost (and, with accounting, MariaDB and slurmdbd), all under one folder, on free ports.

    python tests/slurm_cluster.py start /tmp/slurm [--accounting]   # prints the SLURM_CONF to export
    python tests/slurm_cluster.py stop /tmp/slurm

Needs root and Debian's packages: slurmctld slurmd slurm-client munge (accounting: slurmdbd mariadb-server).
The node is this host with its real CPU count and memory (`slurmd -C`), in one partition `debug`.

Clients find the configuration through SLURM_CONF, except `srun` inside a job: snakemake-executor-plugin-slurm's
job step drops every SLURM_* variable but a few before it calls srun, so srun reads /etc/slurm/slurm.conf, as on a
real cluster's node. `start` links that path to this cluster's file when it does not exist, and `stop` removes the
link; on a machine that already has a Slurm configuration, `start` refuses.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # stop order: dependants first
PARTITION = "debug"
ACCOUNT = "rfpp"


def missing_programs(accounting: bool = False) -> list[str]:
    """The programs a cluster needs that this machine lacks."""
    names = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol"]
    names += ["slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacctmgr", "sacct"] if accounting else []
    return [name for name in names if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"local Slurm: {what} not ready after {timeout:g} s")
        time.sleep(0.2)


class LocalSlurm:
    """The cluster in `root`: start(accounting) / stop(); `env` holds SLURM_CONF for client commands."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_file = self.root / "pids.json"
        self.ports = {"ctld": _free_port(), "d": _free_port(), "dbd": _free_port()}  # kept across restarts

    # ------------------------------------------------------------------------------------------------ clients
    def client(self, *args: str, check: bool = True) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=self.env, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def wait_until_no_jobs(self, timeout: float = 120.0) -> None:
        _wait("an empty queue", lambda: not self.client("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING",
                                                        check=False).strip(), timeout)

    # ------------------------------------------------------------------------------------------------ daemons
    def _pids(self) -> dict[str, int]:
        return json.loads(self.pid_file.read_text()) if self.pid_file.exists() else {}

    def _spawn(self, name: str, args: list[str]) -> None:
        """Start a daemon in the foreground of its own session (it outlives a `start` from the command line)."""
        log = self.root / "log" / f"{name}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        pids = self._pids()
        pids[name] = proc.pid
        self.pid_file.write_text(json.dumps(pids))
        time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"local Slurm: {name} exited at once ({proc.returncode}); see {log}")

    def _stop(self, names: tuple[str, ...]) -> None:
        pids = self._pids()
        for name in [n for n in DAEMONS if n in names and n in pids]:
            pid = pids.pop(name)
            if _is(pid, name):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15
                while _is(pid, name) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _is(pid, name):
                    os.kill(pid, signal.SIGKILL)
            self.pid_file.write_text(json.dumps(pids))

    def start(self, accounting: bool = False) -> None:
        """Start the daemons (munged only once) with accounting on (slurmdbd) or off; wait until the node is up."""
        if missing := missing_programs(accounting):
            raise RuntimeError(f"local Slurm: missing {', '.join(missing)}")
        if os.geteuid() != 0:
            raise RuntimeError("local Slurm: run as root (slurmd starts jobs; /etc/slurm/slurm.conf gets a link)")
        for sub in ("log", "state", "spool", "munge", "db"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if SYSTEM_CONF.is_symlink() and not SYSTEM_CONF.exists():
            SYSTEM_CONF.unlink()  # left by a cluster that was not stopped
        if SYSTEM_CONF.exists() and SYSTEM_CONF.resolve() != self.conf:
            raise RuntimeError(f"{SYSTEM_CONF} exists: this machine has its own Slurm; the local one would clash")
        if "munged" not in self._pids():
            self._start_munge()
        if accounting:
            self._start_accounting(self.ports["dbd"])
        self._write_conf(self.ports, accounting)
        if not SYSTEM_CONF.exists():
            SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
            SYSTEM_CONF.symlink_to(self.conf)
        if accounting:
            user = getpass.getuser()
            self.client("sacctmgr", "--immediate", "add", "cluster", "rfpp", check=False)  # fails when it exists
            self.client("sacctmgr", "--immediate", "add", "account", ACCOUNT, check=False)
            self.client("sacctmgr", "--immediate", "add", "user", user, f"account={ACCOUNT}", check=False)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D"])
        _wait("the node (sinfo: idle)", lambda: self.node_state() in ("idle", "mix", "alloc"))  # jobs may run on

    def stop(self) -> None:
        """Stop every daemon this cluster started (by pid), and remove the /etc/slurm/slurm.conf link."""
        self._stop(DAEMONS)
        if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == self.conf:
            SYSTEM_CONF.unlink()

    def stop_controller(self) -> None:
        """Stop slurmctld alone (an outage: clients fail, running jobs go on)."""
        self._stop(("slurmctld",))

    def restart(self, accounting: bool) -> None:
        """Stop the Slurm daemons and start them again with accounting on or off (jobs and their ids persist)."""
        self._stop(tuple(name for name in DAEMONS if name != "munged"))
        self.start(accounting)

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o755)
        socket_path = self.root / "munge" / "munge.socket"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
                               f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        _wait("munged", socket_path.exists)

    def _start_accounting(self, dbd_port: int) -> None:
        """MariaDB in root/db (a database `slurm` user) and slurmdbd on `dbd_port`."""
        data, sock, db_port = self.root / "db" / "data", self.root / "db" / "mysql.sock", _free_port()
        if not data.exists():
            subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--user={getpass.getuser()}",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           check=True, capture_output=True)
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={data}", f"--user={getpass.getuser()}",
                                 f"--socket={sock}", f"--port={db_port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={self.root / 'db' / 'mariadbd.pid'}",
                                 f"--log-error={self.root / 'log' / 'mariadbd.log'}",
                                 "--innodb-buffer-pool-size=32M"])
        sql = ["mariadb", "--no-defaults", f"--socket={sock}", "--user=root", "--execute"]
        _wait("mariadbd", lambda: subprocess.run([*sql, "SELECT 1"], capture_output=True).returncode == 0)
        subprocess.run([*sql, "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
                              "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"], check=True)
        conf = self.root / "slurmdbd.conf"
        conf.write_text("\n".join([
            "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={dbd_port}", f"SlurmUser={getpass.getuser()}",
            "AuthType=auth/munge", f"AuthInfo=socket={self.root / 'munge' / 'munge.socket'}",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={db_port}",
            "StorageUser=slurm", "StoragePass=slurm", "StorageLoc=slurm_acct_db",
            f"PidFile={self.root / 'slurmdbd.pid'}", f"LogFile={self.root / 'log' / 'slurmdbd.log'}", ""]))
        conf.chmod(0o600)
        self._spawn("slurmdbd", ["slurmdbd", "-D"])

        def listening() -> bool:
            with socket.socket() as sock_:
                return sock_.connect_ex(("127.0.0.1", dbd_port)) == 0

        _wait("slurmdbd", listening)

    def _write_conf(self, ports: dict[str, int], accounting: bool) -> None:
        """slurm.conf for this host: the node as `slurmd -C` describes it, one partition, no cgroups."""
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        name = re.match(r"NodeName=(\S+)", node).group(1)
        user, munge = getpass.getuser(), self.root / "munge" / "munge.socket"
        lines = [
            "ClusterName=rfpp", f"SlurmctldHost={name}(127.0.0.1)", f"SlurmctldPort={ports['ctld']}",
            f"SlurmdPort={ports['d']}", f"SlurmUser={user}", f"SlurmdUser={user}", "AuthType=auth/munge",
            "CredType=cred/munge", f"AuthInfo=socket={munge}", f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}", f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}", f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none", "ReturnToService=2", "JobAcctGatherType=jobacct_gather/none",
            "MinJobAge=3600",  # squeue shows a test's ended jobs however slow the machine
            "MessageTimeout=5",  # clients give up on a stopped controller after 4 s, not 9 s
        ]
        if accounting:
            lines += ["AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
                      f"AccountingStoragePort={ports['dbd']}", f"AccountingStoragePass={munge}"]
        else:
            lines += ["AccountingStorageType=accounting_storage/none"]
        lines += [f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
                  f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]
        self.conf.write_text("\n".join(lines))


def _is(pid: int, name: str) -> bool:
    """Whether process `pid` runs and is `name` (a pid reused by another program is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return Path(cmdline).name == name and state != "Z"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("start", "stop"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    cluster = LocalSlurm(Path(argv[1]))
    if argv[0] == "start":
        cluster.start(accounting="--accounting" in argv[2:])
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
