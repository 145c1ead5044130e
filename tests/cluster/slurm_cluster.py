"""A real single-node SLURM cluster for the ``slurm``-marked tests (``pytest -m slurm``).

The session fixture ``slurm_cluster`` uses a cluster that already answers (``sinfo`` with ``SLURM_CONF`` set, or
one this module started earlier and left running) or else starts one on this machine:

1. installs Debian's ``slurmctld slurmd munge slurm-client`` with apt-get if they are missing (root only; the test
   is skipped with the reason when that is not possible);
2. writes a ``slurm.conf`` under ``$KAFT_SLURM_DIR`` (default ``/tmp/kaft-slurm``): one node ``localhost`` with
   this machine's CPUs (at least 2) and 80 % of its memory, partition ``debug``, no accounting, no cgroups, private ports;
3. starts ``munged`` as the munge user (creating ``/run/munge`` and a key if missing), ``slurmctld`` and
   ``slurmd -N localhost`` (no systemd needed), and waits until ``sinfo`` shows the node idle;
4. exports ``SLURM_CONF`` so that sbatch / squeue (and submitit) in this process and its children find it;
5. stops the daemons it started at the end of the session (``KAFT_SLURM_KEEP=1`` leaves them running).

Without slurmdbd, ``sacct`` does not work: submitit logs a warning and reports job state UNKNOWN, but results
still come back through its result files. Runnable by hand: ``python tests/cluster/slurm_cluster.py start|stop|status``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "munge", "slurm-client"]
BINARIES = ["slurmctld", "slurmd", "munged", "sbatch", "sinfo", "squeue", "scancel"]
CTLD_PORT, SLURMD_PORT = 16817, 16818  # not the defaults: a system cluster on the standard ports stays untouched


class Unavailable(RuntimeError):
    """A cluster cannot be had here; the message says why (the tests skip with it)."""


def _run(cmd, timeout=60, check=True, env=None, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and out.returncode != 0:
        raise Unavailable(f"{' '.join(map(str, cmd))} failed ({out.returncode}): {(out.stderr or out.stdout)[-800:]}")
    return out


def _have_binaries() -> bool:
    return all(shutil.which(b) or os.path.exists(f"/usr/sbin/{b}") for b in BINARIES)


def install() -> None:
    if _have_binaries():
        return
    if os.geteuid() != 0:
        raise Unavailable(
            "SLURM is not installed and installing it needs root (apt-get install " + " ".join(PACKAGES) + ")"
        )
    if not shutil.which("apt-get"):
        raise Unavailable("SLURM is not installed and there is no apt-get to install it with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], timeout=900, check=False, env=env
    )
    if out.returncode != 0:  # stale package lists: update once and retry
        _run(["apt-get", "update", "-q"], timeout=600, env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], timeout=900, env=env)
    if not _have_binaries():
        raise Unavailable(f"apt-get installed {PACKAGES} but the SLURM binaries are still missing")


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) / 1024 * 0.8)
    return 2048


def write_conf(root: Path) -> Path:
    # at least 2 CPUs, so that a job of tasks_per_node=2 (cpus_per_task=1, test_slurm_ddp.py) fits the node even on a
    # 1-CPU machine: config_overrides makes slurmd take these numbers instead of the hardware's (the tasks share)
    cpus = max(len(os.sched_getaffinity(0)), 2)
    for d in ("state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""# written by kaft's tests/cluster/slurm_cluster.py: a single-node test cluster
ClusterName=kafttest
SlurmctldHost=localhost
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _munge_ok() -> bool:
    if not shutil.which("munge"):
        return False
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return (
            enc.returncode == 0
            and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_munge() -> bool:
    """Start munged as the munge user unless one answers; returns True if this call started it."""
    if _munge_ok():
        return False
    if os.geteuid() != 0:
        raise Unavailable("munged is not running and starting it needs root")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(128))
    for d, mode in (
        (Path("/run/munge"), 0o755),
        (Path("/var/lib/munge"), 0o700),
        (Path("/var/log/munge"), 0o700),
        (key.parent, 0o700),
    ):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
        d.chmod(mode)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], timeout=30)
    for _ in range(50):
        if _munge_ok():
            return True
        time.sleep(0.1)
    raise Unavailable("munged started but munge -n | unmunge does not work")


def _env(conf: Path) -> dict:
    return {**os.environ, "SLURM_CONF": str(conf)}


def node_state(conf: Path) -> str | None:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10, env=_env(conf)
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0].rstrip("*~#") if out.returncode == 0 and out.stdout.strip() else None


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(root: Path) -> dict:
    """Start (or find running) the test cluster under ``root``; returns what :func:`stop` needs."""
    install()
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    if conf.exists() and node_state(conf) in ("idle", "mixed", "allocated"):
        return {"conf": conf, "root": root, "started": []}  # left running by an earlier session
    conf = write_conf(root)
    started = []
    if start_munge():
        started.append("munged")
    for pidfile in ("slurmctld.pid", "slurmd.pid"):  # stale daemons of an earlier run with another config
        pid = _pid(root / pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
            time.sleep(1)
    env = _env(conf)
    _run(["slurmctld", "-c", "-f", str(conf)], env=env, timeout=30)  # -c: clear old state (jobs, node states)
    started.append("slurmctld")
    _run(["slurmd", "-N", "localhost", "-f", str(conf)], env=env, timeout=30)
    started.append("slurmd")
    deadline = time.time() + 60
    state = None
    while time.time() < deadline:
        state = node_state(conf)
        if state == "idle":
            break
        if state in ("down", "drained", "draining"):
            subprocess.run(
                ["scontrol", "update", "NodeName=localhost", "State=RESUME"], env=env, capture_output=True, timeout=10
            )
        time.sleep(0.5)
    else:
        log = ""
        for f in ("slurmctld.log", "slurmd.log"):
            p = root / "log" / f
            log += f"\n--- {f}\n" + (p.read_text()[-1500:] if p.exists() else "(none)")
        raise Unavailable(f"the SLURM node did not become idle within 60 s (state {state}){log}")
    return {"conf": conf, "root": root, "started": started}


def stop(info: dict) -> None:
    root = info["root"]
    for name in ("slurmd", "slurmctld"):
        if name in info["started"]:
            pid = _pid(root / f"{name}.pid")
            if pid:
                os.kill(pid, signal.SIGTERM)
    if "munged" in info["started"]:
        pid = _pid(Path("/run/munge/munged.pid"))
        if pid:
            os.kill(pid, signal.SIGTERM)
    for name in ("slurmd", "slurmctld"):
        for _ in range(50):
            if not _pid(root / f"{name}.pid"):
                break
            time.sleep(0.1)


def existing_cluster() -> bool:
    """A cluster this process is already pointed at (SLURM_CONF set, or a default config that answers)."""
    if not shutil.which("sinfo"):
        return False
    if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists():
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mixed") for s in out.stdout.split())


if __name__ == "__main__":
    root = Path(os.environ.get("KAFT_SLURM_DIR", "/tmp/kaft-slurm"))
    what = sys.argv[1] if len(sys.argv) > 1 else "status"
    if what == "start":
        info = start(root)
        print(f"cluster up: export SLURM_CONF={info['conf']}  (started {info['started'] or 'nothing'})")
    elif what == "stop":
        stop({"root": root, "started": ["slurmd", "slurmctld"]})
        print("stopped slurmd and slurmctld (munged left running)")
    else:
        print(node_state(root / "slurm.conf"))
