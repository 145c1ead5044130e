"""Ctrl-C in a job: one line instead of a traceback, and a run dir that says ``interrupted`` (not "running" forever).

:func:`record` writes results.json with ``"status": "interrupted"``, the stage that was running and the job's
identity as far as it is known — unless the run dir holds a done results.json (a ``force=true`` re-run that was
interrupted keeps the finished run's numbers until it has new ones). ``python -m kaft.sweep.status`` shows the job
as ``interrupted``; the same command resumes it: the cache keeps every finished stage, training its checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kaft import identity
from kaft.results import read_results

log = logging.getLogger("kaft")

EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that knows the stage it stopped and that the run dir has recorded it."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


def line(exc: BaseException) -> str:
    """The one line the CLI prints for a Ctrl-C."""
    stage = getattr(exc, "stage", None) or "before the job started"
    return f"kaft: interrupted: {stage}; re-run the same command to resume"


def record(run_dir: str | Path, job: Any, info: dict) -> Interrupted:
    """Mark ``run_dir`` interrupted (see the module doc); returns the exception to raise. Never raises itself."""
    from kaft import stages as S
    from kaft import track

    stage = next(reversed(job.timer.seconds), None) or "start"  # a stage's time is recorded when it ends or stops
    run_dir = Path(run_dir)
    try:
        prev = read_results(run_dir)
        if prev is not None and prev.get("status") == "done":
            log.warning("interrupted: %s keeps the finished run's results.json", run_dir)
            return Interrupted(stage)
        method = info["choices"].get("method")
        ident = identity.make(
            identity.config_part(job.cfg, method), job.ctx.fps if job.ctx else None, job.keys.get("model")
        )
        track.write_results(
            run_dir,
            {
                "status": "interrupted",
                "stage": stage,
                "error": f"interrupted during {stage}",
                "job": {k: info.get(k) for k in ("name", "override_dirname", "num", "run_dir")},
                "overrides": info.get("overrides", []),
                "metrics": None,
                "identity": ident,
                "cache": {s: ("hit" if hit else "miss") for s, hit in job.cache_hits.items()},
                "timings": job.timer.seconds,
                "config": {**S.plain(job.cfg), "method": method},
            },
        )
    except Exception as e:  # noqa: BLE001 - recording must not hide the interrupt
        log.warning("interrupted: could not record it in %s: %s", run_dir, e)
    return Interrupted(stage)


__all__ = ["EXIT_CODE", "Interrupted", "line", "record"]
