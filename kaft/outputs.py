"""Writing the paths a user names (``--out``, ``--csv``, a sweep's summary and tables) without replacing their files.

The rule, for every kaft and analysis tool that writes such a path: a file is written only where the path is free,
or where it holds a file kaft wrote and nobody has changed since. What kaft wrote is recorded beside it in
``.kaft-written.json`` (file name -> the SHA-256 of the bytes written and the tool that wrote them); a listed file
whose bytes still hash to the recorded value is kaft's and may be replaced. The few files kaft wrote at fixed names
before that record existed (a sweep dir's summary and paper tables, analysis/REPORT.md) are also recognised by the
first line their tool always writes (``legacy_header``). Anything else -- a user's file, a file kaft wrote that
someone edited since, a folder, a path below a regular file -- is refused with one ``kaft: error:`` line
(:class:`OutputError`) and nothing is written, because a file kaft cannot prove is its own may be the only copy of
someone's work. Writes go through a temporary file renamed into place, so a failed write leaves the old file.

Folders of many files (``kaft.export``) carry a manifest of their own instead (kaft/export.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from kaft.errors import KaftError

MANIFEST = ".kaft-written.json"


class OutputError(KaftError):
    """A target path kaft will not write to (it holds something kaft did not write); the message says what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def written_by_kaft(path: Path, legacy_header: str | None = None) -> bool:
    """Whether ``path`` is a regular file kaft wrote and nobody changed since (see the module docstring)."""
    if path.is_symlink() or not path.is_file():
        return False
    entry = _manifest(path.parent).get(path.name)
    if isinstance(entry, dict) and entry.get("sha256") == _sha256(path):
        return True
    if legacy_header:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(legacy_header)
    return False


def check_target(path: str | os.PathLike, tool: str, legacy_header: str | None = None) -> Path:
    """``path`` (expanded) if ``tool`` may write a file there, else :class:`OutputError` naming the fix."""
    path = Path(path).expanduser()
    above = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise OutputError(f"{path}: {above} is a file, not a folder; choose an output path inside a folder")
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path} is a folder; {tool} writes a file: name the file (e.g. {path / 'table.md'})")
    if (path.exists() or path.is_symlink()) and not written_by_kaft(path, legacy_header):
        raise OutputError(
            f"{path} exists and was not written by {tool} (or was changed since); kaft never replaces "
            f"a file it did not write: move it away or choose another output path"
        )
    return path


def write_file(
    path: str | os.PathLike, tool: str, write: Callable[[Path], None], legacy_header: str | None = None
) -> Path:
    """Check ``path`` (:func:`check_target`), let ``write(tmp)`` fill a temporary file in the same folder, rename it
    into place and record it as written by ``tool``."""
    path = check_target(path, tool, legacy_header)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write there ({e.strerror or e}); choose another output path") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _record(path, tool)
    return path


def write_text(path: str | os.PathLike, text: str, tool: str, legacy_header: str | None = None) -> Path:
    """:func:`write_file` of a UTF-8 text."""
    return write_file(path, tool, lambda tmp: tmp.write_text(text, encoding="utf-8"), legacy_header)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _record(path: Path, tool: str) -> None:
    from kaft.cache import atomic_write_json

    entries = _manifest(path.parent)
    entries[path.name] = {"sha256": _sha256(path), "tool": tool}
    atomic_write_json(path.parent / MANIFEST, entries)
