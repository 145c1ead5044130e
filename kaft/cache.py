"""A content-addressed artifact cache shared by every run and every job of a sweep.

An artifact lives in ``<root>/<stage>/<key>/`` where ``key`` hashes everything that affects it. It is built in a
temporary sibling directory and renamed into place only when complete, with a ``manifest.json`` written last, so a
reader never sees half an artifact. A file lock per key makes concurrent jobs compute it once: the first computes,
the others wait and reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _canonical(obj: Any) -> Any:
    """Turn configs (OmegaConf, dataclasses, tuples) into plain JSON-able values with a stable form."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
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


@dataclass
class Hit:
    path: Path
    cached: bool  # True when the artifact was already there (or computed by a concurrent job)
    seconds: float


class Cache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def scratch(self, stage: str, key: str) -> Path:
        """A stable work directory for a stage's partial results (e.g. probing chunks), so a killed build resumes;
        removed once the artifact is complete."""
        path = self.root / stage / f".partial-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / MANIFEST).exists()

    @contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / stage / f".{key}.lock"))
        t0 = time.time()
        with lock:
            waited = time.time() - t0
            if waited > 1:
                log.info("waited %.0fs for another job computing %s/%s", waited, stage, key)
            yield

    def get_or_create(self, stage: str, key: str, build: Callable[[Path], Any], meta: dict | None = None) -> Hit:
        """Return the artifact directory for ``(stage, key)``, calling ``build(tmpdir)`` only if it is missing.

        ``build`` writes its files into the directory it is given; the directory is renamed into place on success
        and deleted on failure, so nothing half-written is ever visible.
        """
        final = self.path(stage, key)
        t0 = time.time()
        if (final / MANIFEST).exists():
            log.info("cache hit: %s/%s", stage, key)
            return Hit(final, True, time.time() - t0)
        with self._lock(stage, key):
            if (final / MANIFEST).exists():  # a concurrent job built it while we waited
                log.info("cache hit (built by a concurrent job): %s/%s", stage, key)
                return Hit(final, True, time.time() - t0)
            if final.exists():  # debris of a killed writer: no manifest means incomplete
                shutil.rmtree(final, ignore_errors=True)
            for debris in final.parent.glob(f".{key}.*"):  # temp dirs of killed writers (we hold the lock)
                if debris.is_dir():
                    shutil.rmtree(debris, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                build(tmp)
                manifest = {"stage": stage, "key": key, "created": time.time(), "seconds": time.time() - t0,
                            "files": sorted(p.name for p in tmp.iterdir()), **(meta or {})}
                atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
                os.replace(tmp, final)
                shutil.rmtree(final.parent / f".partial-{key}", ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("cache miss: computed %s/%s in %.1fs", stage, key, time.time() - t0)
        return Hit(final, False, time.time() - t0)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
