"""The artifact lock of :mod:`kaft.cache`: one builder per key on any filesystem, including shared cluster ones.

Why a lock file and not ``fcntl``/``flock``: a file created with ``O_CREAT | O_EXCL`` is atomic on local disks and on
NFSv3+/Lustre, where advisory locks are not reliable. The file holds the holder's host, pid and process start time
and a background thread refreshes its mtime (the heartbeat), so a waiter can tell a dead holder from a slow one; the
rules for a stale lock are in :mod:`kaft.cache`'s docstring. Kept apart from the cache because it is the one part
that knows about processes, hosts and SLURM requeues, and none of the cache's hashing or manifests.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger("kaft.cache")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid``: with the pid it names one process, even after
    the pid is reused (None where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, start: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return start is None or _proc_start(pid) in (None, start)


def _slurm_job() -> dict:
    """This process's SLURM job id and restart count (a requeued job keeps its id; SLURM counts the restarts)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job": job, "slurm_restart": restart}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stat_sig(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _create_exclusive(path: Path, payload: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(payload))
        fh.flush()
        os.fsync(fh.fileno())
    return True


class ArtifactLock:
    """An exclusive lock on one cache key that works on shared filesystems (see the module docstring)."""

    def __init__(
        self, path: Path, what: str, heartbeat: float | None = None, stale_after: float | None = None, poll: float = 0.2
    ):
        self.path, self.what = Path(path), what
        self.heartbeat = heartbeat if heartbeat is not None else _env_float("KAFT_LOCK_HEARTBEAT_S", 30.0)
        self.stale_after = stale_after if stale_after is not None else _env_float("KAFT_LOCK_STALE_S", 300.0)
        self.poll = poll
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- holding
    def _payload(self) -> dict:
        return {
            "host": self.host,
            "pid": os.getpid(),
            "pid_start": _proc_start(os.getpid()),
            "since": time.time(),
            "token": self.token,
            "what": self.what,
            **_slurm_job(),
        }

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                pass
            holder = _read_json(self.path)
            if holder is not None and holder.get("token") != self.token:
                log.warning(
                    "lock %s was taken over by %s:%s while this job held it (heartbeat too slow?)",
                    self.path,
                    holder.get("host"),
                    holder.get("pid"),
                )
                return

    def acquire(self) -> float:
        """Block until the lock is ours; returns the seconds waited."""
        t0 = time.monotonic()
        watched: tuple | None = None  # (stat signature, monotonic time it was first seen)
        last_log = -1e9
        delay = self.poll
        while True:
            if _create_exclusive(self.path, self._payload()):
                break
            sig = _stat_sig(self.path)
            if sig is None:
                continue  # released between our create and stat: try again at once
            now = time.monotonic()
            if watched is None or watched[0] != sig:
                watched = (sig, now)  # the heartbeat moved (or a new holder): watch afresh
            holder = _read_json(self.path) or {}
            reason = self._stale(holder, now - watched[1])
            if reason and self._break(sig, reason, holder):
                watched = None
                continue
            if now - last_log > 60:
                log.info(
                    "waiting for %s: being computed by %s pid %s since %s",
                    self.what,
                    holder.get("host", "?"),
                    holder.get("pid", "?"),
                    time.strftime("%H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?",
                )
                last_log = now
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"kaft-lock-{self.path.name}", daemon=True)
        self._thread.start()
        return time.monotonic() - t0

    def _stale(self, holder: dict, unchanged_for: float) -> str | None:
        mine = _slurm_job()
        if (
            mine
            and holder.get("slurm_job") == mine["slurm_job"]
            and int(holder.get("slurm_restart", 0)) < mine["slurm_restart"]
        ):
            return f"its holder was this SLURM job before it was requeued (restart {holder.get('slurm_restart', 0)})"
        if (
            holder.get("host") == self.host
            and isinstance(holder.get("pid"), int)
            and not _pid_alive(holder["pid"], holder.get("pid_start"))
        ):
            return f"its holder (pid {holder['pid']} on this host) is gone"
        if unchanged_for > self.stale_after:
            return f"its heartbeat has not moved for {unchanged_for:.0f}s"
        return None

    def _break(self, sig: tuple, reason: str, holder: dict) -> bool:
        """Remove the stale lock with signature ``sig`` unless someone else already did; True if it is gone."""
        guard = self.path.with_name(self.path.name + ".break")
        if not _create_exclusive(guard, self._payload()):
            g = _stat_sig(guard)
            if g is not None and time.time() - g[1] / 1e9 > max(60.0, 4 * self.heartbeat):
                guard.unlink(missing_ok=True)  # a breaker died in its few milliseconds
            return False
        try:
            if _stat_sig(self.path) != sig:
                return False  # refreshed or replaced since we looked: not ours to break
            log.warning(
                "breaking a stale lock on %s (%s: %s pid %s)",
                self.what,
                reason,
                holder.get("host", "?"),
                holder.get("pid", "?"),
            )
            self.path.unlink(missing_ok=True)
            return True
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = _read_json(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
