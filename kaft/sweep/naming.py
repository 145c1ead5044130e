"""A sweep job's run directory name (``conf/config.yaml``, ``hydra.run.dir`` and ``hydra.sweep.subdir``:
``${kaft_subdir:...}`` and ``${kaft_hash:...}``).

Run directories are derived from the overrides alone, so a re-run of the same command finds the jobs that already
finished, and a resubmitted SLURM job lands in its own directory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from kaft.track import redact

_NOT_IN_HASH = {"force", "progress"}  # settings that do not change a job's results


def job_subdir(num: Any, override_dirname: str, max_len: int = 80) -> str:
    """``<num>_<overrides>`` made filesystem-safe (no path separators from path overrides) and short (long override
    lists end in a hash of the full text)."""
    override_dirname = redact(str(override_dirname))  # an override like +x=${oc.env:HF_TOKEN} arrives resolved
    name = str(override_dirname).replace(os.sep, "_").replace(":", "_")
    if len(name) > max_len:
        name = name[:max_len] + "-" + hashlib.sha256(str(override_dirname).encode()).hexdigest()[:8]
    return f"{num}_{name}" if name else str(num)


def config_hash(overrides: Any) -> str:
    """A short hash of a job's full override list (including keys left out of its directory name, e.g. seed)."""
    items = [
        o
        for o in (list(overrides) if overrides is not None else [])
        if str(o).split("=", 1)[0].lstrip("+~") not in _NOT_IN_HASH
    ]
    return hashlib.sha256("\n".join(sorted(map(str, items))).encode()).hexdigest()[:8]
