"""A cache build that filled the disk: one line naming the cache, the free space and what the artifact needs.

A full disk shows up in many shapes -- ``OSError(ENOSPC)`` from Python, a ``SafetensorError`` whose text holds
"No space left on device", torch's "file write failed" -- usually after minutes of training. Whatever the shape, when
the error says so or the disk has under :data:`NEARLY_FULL` bytes left, :func:`failed_build` turns it into one
:class:`DiskFullError` line, after removing the half-written temporary directory (the cache never keeps half an
artifact; a stage's resumable scratch, e.g. training checkpoints, stays for the re-run).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from kaft.errors import KaftError

NEARLY_FULL = 1 << 20  #: bytes: a write error with less than this free is taken for a full disk
_TEXTS = ("no space left on device", "storagefull", "os error 28", "disk quota exceeded")


class DiskFullError(KaftError):
    """The disk holding the cache ran out of space while an artifact was written."""


def _says_full(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:  # the cause chain: a wrapper's message may hide the OSError
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in _TEXTS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _size(path: Path) -> int:
    total = 0
    for top, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(top, n)).st_size
            except OSError:
                pass
    return total


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def failed_build(exc: BaseException, tmp: Path, root: Path, what: str) -> DiskFullError | None:
    """Remove ``tmp`` (the failed build's directory); a :class:`DiskFullError` to raise instead of ``exc`` if the
    disk was full, else None (re-raise ``exc``)."""
    free = _free(tmp.parent)
    full = isinstance(exc, Exception) and (_says_full(exc) or (free is not None and free < NEARLY_FULL))
    written = _size(tmp) if full else 0
    shutil.rmtree(tmp, ignore_errors=True)
    if not full:
        return None
    now = _free(tmp.parent)
    room = f"{_mib(now)} are free there now, so it needs more than that" if now is not None else "no free space"
    return DiskFullError(
        f"the disk holding the kaft cache ({root}) is full: writing {what} stopped after "
        f"{_mib(written)} (removed again); {room}. Free space on that disk or set cache_dir / "
        f"KAFT_CACHE_DIR to a larger one, then run the same command again"
    )
