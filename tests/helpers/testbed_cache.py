"""A cache dir of a test's own that holds the session's testbed model: a test that asserts cache misses needs a cache
no other test (or an earlier run) has filled, and rebuilding the testbed model per test would cost a minute."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def shared_cache() -> str:
    """The cache the session's testbed tests share (CI sets KAFT_CACHE_DIR to a fresh dir)."""
    return os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft")


def private_testbed_cache(dest: Path) -> Path:
    """``dest`` as an empty cache holding a hard-linked copy of the default testbed model (built in the shared cache
    first if it is not there: under its lock, as a job would)."""
    from kaft import modeling
    from kaft.stages import plain
    from kaft.sweep import plan

    ((_, _, cfg),) = plan.compose_jobs(["logger=none", f"cache_dir={shared_cache()}"], False)
    task = plan.task_config(cfg)
    path, _ = modeling.resolve(plain(task.model), task.cache_dir, plain(task))
    src = Path(path)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest / src.parent.name / src.name, copy_function=os.link)
    return dest
