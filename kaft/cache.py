"""A content-addressed artifact cache shared by every run and every job of a sweep.

An artifact lives in ``<root>/<stage>/<key>/`` where ``key`` hashes everything that affects it. It is built in a
temporary sibling directory and renamed into place only when complete, with a ``manifest.json`` written last, so a
reader never sees half an artifact.

**One builder per key, on any filesystem.** Concurrent jobs (other processes, other nodes of a cluster) that need
the same missing artifact elect one builder through a lock file ``<root>/<stage>/.<key>.lock`` created with
``O_CREAT | O_EXCL`` (atomic on local disks and on NFSv3+/Lustre, unlike ``fcntl``/``flock`` locks). It holds the
holder's host, pid and start time; the holder refreshes its mtime every ``heartbeat`` seconds from a background
thread. The others wait (logging who holds it), then find the finished artifact and reuse it. A lock is *stale*
— its holder died — when its holder ran on this host and that process is gone (pid + process start time, so a
reused pid does not count; recovered at once), when it was held by this very SLURM job before a requeue (same
``SLURM_JOB_ID``, lower ``SLURM_RESTART_COUNT``: recovered at once on any node), or when its
heartbeat has not moved for ``stale_after`` seconds as watched by the waiter itself (so clocks of different
hosts need not agree). A stale lock is broken under a short second lock (``.<key>.lock.break``), so two waiters
never both break it and both build. Defaults: heartbeat 30 s, stale after 300 s (``$KAFT_LOCK_HEARTBEAT_S``,
``$KAFT_LOCK_STALE_S``): well above NFS attribute caching (``actimeo`` <= 60 s).

**Integrity.** The manifest records every file's relative path, size and sha256 (hashed once, at write) and a
``content_hash`` over them. A hit verifies the file list and sizes always (a stat per file), and the sha256 of
every file when the artifact is at most ``verify_mb`` MiB (default 256: every kaft artifact, LoRA adapters of 8B
models included, takes < 1 s to hash; ``$KAFT_CACHE_VERIFY`` = ``size`` | ``full`` | a size in MiB). An artifact
that fails (a file truncated, deleted or changed after the fact) is moved aside and rebuilt. Artifacts written
before manifests carried hashes are checked for their files' presence only.

Files and directories are created with the user's umask (not ``mkdtemp``'s 0700 / ``mkstemp``'s 0600), so a
cache shared by a group stays readable by it, and nothing is world-writable unless the umask says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaft import diskspace
from kaft.lock import ArtifactLock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HASH_CHUNK = 1 << 20


def _canonical(obj: Any) -> Any:
    """Turn configs (OmegaConf, dataclasses, tuples) into plain JSON-able values with a stable form."""
    omegaconf = sys.modules.get("omegaconf")  # a config object exists only if omegaconf was imported: the vLLM
    # worker's venv (tests/unit/detection/vllm_probe_worker.py) imports kaft.detection without omegaconf installed
    if omegaconf is not None and isinstance(obj, (omegaconf.DictConfig, omegaconf.ListConfig)):
        obj = omegaconf.OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 1.0 and 1 must hash alike: both come from YAML
    if isinstance(obj, Path):
        return str(obj)
    return obj


def make_key(*parts: Any) -> str:
    """A short stable hash of everything that determines an artifact."""
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------------------- permissions
def current_umask() -> int:
    """The process umask (read from /proc without changing it; elsewhere set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: str | os.PathLike, directory: bool) -> None:
    """Give a path made by mkdtemp (0700) / mkstemp (0600) the mode a plain mkdir / open would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# ----------------------------------------------------------------------------------------------- hashing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def hash_files(root: Path) -> tuple[dict[str, dict], str]:
    """``({relpath: {size, sha256}}, content_hash)`` of every file under ``root`` (the manifest excluded)."""
    files = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(root)}
    blob = "\n".join(f"{rel}\t{f['size']}\t{f['sha256']}" for rel, f in sorted(files.items()))
    return files, hashlib.sha256(blob.encode()).hexdigest()


def _verify_limit() -> int | None:
    """Bytes up to which a hit is verified by sha256 (None: always, 0: sizes only)."""
    v = os.environ.get("KAFT_CACHE_VERIFY", "").strip().lower()
    if v == "full":
        return None
    if v == "size":
        return 0
    try:
        return int(float(v) * 2**20) if v else 256 * 2**20
    except ValueError:
        log.warning("KAFT_CACHE_VERIFY=%r: expected size, full or a number of MiB; using 256", v)
        return 256 * 2**20


def verify(path: Path, full: bool | None = None) -> str | None:
    """``None`` if the artifact at ``path`` matches its manifest, else what is wrong (one line).

    Sizes are always checked; sha256 too when ``full`` (default: when the artifact is within the verify limit)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e.__class__.__name__})"
    files = manifest.get("files")
    if isinstance(files, list):  # an old manifest: names only
        missing = [n for n in files if not (path / n).exists()]
        return f"missing {missing[0]}" if missing else None
    if not isinstance(files, dict):
        return "manifest without a file list"
    for rel, f in files.items():
        try:
            size = (path / rel).stat().st_size
        except OSError:
            return f"missing {rel}"
        if size != f["size"]:
            return f"{rel}: {size} bytes, manifest says {f['size']}"
    if full is None:
        limit = _verify_limit()
        full = limit is None or sum(f["size"] for f in files.values()) <= limit
    if full:
        for rel, f in files.items():
            if _sha256(path / rel) != f["sha256"]:
                return f"{rel}: sha256 differs from the manifest's"
    return None


# ----------------------------------------------------------------------------------------------- the cache
@dataclass
class Hit:
    path: Path
    cached: bool  # True when the artifact was already there (or computed by a concurrent job)
    seconds: float


class Cache:
    def __init__(self, root: str | os.PathLike, heartbeat: float | None = None, stale_after: float | None = None):
        self.root = Path(root).expanduser()
        self.heartbeat, self.stale_after = heartbeat, stale_after

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def scratch(self, stage: str, key: str) -> Path:
        """A stable work directory for a stage's partial results (probing chunks, training checkpoints), so a
        killed or requeued build resumes; removed once the artifact is complete."""
        path = self.root / stage / f".partial-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / MANIFEST).exists()

    @contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        lock = ArtifactLock(self.root / stage / f".{key}.lock", f"{stage}/{key}", self.heartbeat, self.stale_after)
        waited = lock.acquire()
        try:
            if waited > 1:
                log.info("waited %.0fs for another job computing %s/%s", waited, stage, key)
            yield
        finally:
            lock.release()

    def _valid(self, stage: str, key: str) -> bool:
        final = self.path(stage, key)
        if not (final / MANIFEST).exists():
            return False
        problem = verify(final)
        if problem:
            log.warning("cache artifact %s/%s is damaged (%s): recomputing it", stage, key, problem)
        return problem is None

    def get_or_create(self, stage: str, key: str, build: Callable[[Path], Any], meta: dict | None = None) -> Hit:
        """Return the artifact directory for ``(stage, key)``, calling ``build(tmpdir)`` only if it is missing
        (or damaged).

        ``build`` writes its files into the directory it is given; the directory is renamed into place on success
        and deleted on failure, so nothing half-written is ever visible.
        """
        final = self.path(stage, key)
        t0 = time.time()
        if self._valid(stage, key):
            log.info("cache hit: %s/%s", stage, key)
            return Hit(final, True, time.time() - t0)
        with self._lock(stage, key):
            if self._valid(stage, key):  # a concurrent job built it while we waited
                log.info("cache hit (built by a concurrent job): %s/%s", stage, key)
                return Hit(final, True, time.time() - t0)
            if final.exists():  # damaged, or debris of a killed writer (no manifest): move aside, then delete
                aside = final.parent / f".{key}.bad-{uuid.uuid4().hex[:8]}"
                os.replace(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
            for debris in final.parent.glob(f".{key}.*"):  # temp dirs of killed writers (we hold the lock)
                if debris.is_dir():
                    shutil.rmtree(debris, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                _apply_umask(tmp, directory=True)
                build(tmp)
                files, content_hash = hash_files(tmp)
                manifest = {
                    "stage": stage,
                    "key": key,
                    "created": time.time(),
                    "seconds": time.time() - t0,
                    "content_hash": content_hash,
                    "files": files,
                    **(meta or {}),
                }
                atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
                os.replace(tmp, final)
                shutil.rmtree(final.parent / f".partial-{key}", ignore_errors=True)
            except BaseException as e:  # tmp removed; a full disk becomes one line (kaft/diskspace.py)
                line = diskspace.failed_build(e, tmp, self.root, f"{stage}/{key}")
                if line is None:
                    raise
                raise line from None
        log.info("cache miss: computed %s/%s in %.1fs", stage, key, time.time() - t0)
        return Hit(final, False, time.time() - t0)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see old or new, never half.
    The file gets the mode a plain ``open(path, "w")`` would give it (the umask's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _apply_umask(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
