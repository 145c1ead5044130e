"""A real small filesystem for full-disk tests (root only: elsewhere the test is skipped)."""

from __future__ import annotations

import contextlib
import subprocess

import pytest


def small_disk(path, size: str):
    """A real filesystem of ``size`` (e.g. "64k") mounted at ``path`` for a full-disk test: a context manager
    yielding the mount point, unmounted afterwards; the test is skipped where mounting is not permitted (not root)."""

    @contextlib.contextmanager
    def mounted():
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); the raised-error cases still run")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)

    return mounted()
