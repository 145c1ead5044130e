"""Job states of a sweep, and how a failing job is recorded.

``python -m kaft.sweep.status SWEEP_DIR`` lists every job of a multirun — also the ones not started yet, enumerated
from the sweep's ``multirun.yaml`` — with its state:

``done``         results.json with status done (the average accuracy is shown)
``failed``       results.json with status failed, an ``error.txt`` in the job's run dir, a submitit result holding
                 an exception, or a SLURM kill (time limit, memory, cancel) in the job's submitit log; the detail is
                 the error's last line
``stale``        results.json with status done, but of another config than the one Hydra last wrote into the run
                 dir (``.hydra/config.yaml``; kaft.identity): its numbers are not this job's
``interrupted``  results.json with status interrupted (Ctrl-C; the detail names the stage): the same command resumes
``running``      the job has started (Hydra wrote its ``.hydra/`` folder, or submitit its log) and has no result yet
                 (a job whose launcher was killed looks the same)
``not started``  no trace of the job yet (``queued`` when submitit has submitted it to SLURM)

Failure recording (used by ``kaft.run``): in a multirun, a job that raises writes ``error.txt`` (the
traceback) and ``results.json`` with ``"status": "failed"`` and ``"error": <the traceback's last line>`` into its
run dir and returns NaN, so the other jobs of the sweep go on; the sweep summary lists it as failed and the sweep
exits 1. A single run keeps the plain behaviour: a user error prints one ``kaft: error: ...`` line and exits 2,
anything else raises.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from kaft.cache import atomic_write_json, atomic_write_text
from kaft.errors import KaftError
from kaft.results import ERROR_FILE, RESULTS_FILE, error_last_line, hydra_job, job_dirs, read_results
from kaft.track import redact

STATES = ("done", "stale", "running", "interrupted", "failed", "not started")


class PathError(KaftError):
    """A path kaft must write to that cannot be created."""


# config values that cannot be resolved, unusable paths: user errors like kaft's own
CONFIG_ERRORS = (
    oc_errors.MissingMandatoryValue,
    oc_errors.InterpolationResolutionError,
    oc_errors.ValidationError,
    PathError,
)

_started = False  # set when a job function starts: OSErrors before it (Hydra creating the run dir) are user errors


def job_started() -> None:
    global _started
    _started = True


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`PathError` unless ``path`` is, or can be created as, a writable directory. Creates nothing."""
    p = Path(str(path)).expanduser().absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise PathError(f"{what} {p}: {probe} is not a directory; point it at a directory you can write to")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathError(f"{what} {p}: {probe} is not writable; point it at a directory you can write to")


# ----------------------------------------------------------------------------------------------- recording failures
def in_multirun() -> bool:
    try:
        # lazy: Hydra is slow to import; only the Hydra-facing paths need it
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ValueError, ImportError):  # not under Hydra
        return False


def error_line(exc: BaseException) -> str:
    """The last line of the exception's traceback: ``Type: message`` (the message's last line)."""
    lines = [ln for ln in "".join(traceback.format_exception_only(type(exc), exc)).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """A multi-line error message (Hydra's, OmegaConf's) folded into one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if "Config search path:" in lines:  # Hydra's list of config dirs after a missing option: not actionable
        lines = lines[: lines.index("Config search path:")]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "Set the environment variable"))]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip() and str(cause).strip() not in str(exc):
        lines += [
            ln.strip()
            for ln in str(cause).splitlines()
            if ln.strip() and not ln.strip().startswith(("full_key:", "object_type=", "reference_type="))
        ][:1]
    if not lines:
        return type(exc).__name__
    override = getattr(exc, "override", None)  # Hydra's OverrideParseException names the bad override
    if isinstance(override, str) and override not in lines[0]:
        lines[0] = f"bad override {override!r}: {lines[0]}"
    head, rest = lines[0], lines[1:]
    if rest and rest[0].endswith(":"):  # "Available options in 'loss':" followed by one option per line
        return f"{head}; {rest[0]} {', '.join(rest[1:])}".rstrip()
    return ": ".join([head, *rest])


def record_failure(run_dir: str | os.PathLike, exc: BaseException, job: Mapping | None = None, cfg: Any = None) -> str:
    """Write ``error.txt`` (the traceback) and a ``results.json`` with status failed into ``run_dir``; returns the
    error's last line. Never raises (a failure to record must not hide the failure)."""
    line = error_line(exc)
    try:
        run_dir = Path(run_dir)
        atomic_write_text(run_dir / ERROR_FILE, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        config = None
        if cfg is not None:
            try:
                config = OmegaConf.to_container(cfg, resolve=True)
            except Exception:  # noqa: BLE001 - the config itself may be what failed
                with contextlib.suppress(Exception):
                    config = OmegaConf.to_container(cfg, resolve=False)
        job = dict(job or {})
        atomic_write_json(
            run_dir / RESULTS_FILE,
            {
                "status": "failed",
                "error": line,
                "error_type": type(exc).__name__,
                "error_file": ERROR_FILE,
                "job": {k: job.get(k) for k in ("name", "override_dirname", "num", "run_dir")},
                "overrides": list(job.get("overrides") or []),
                "metrics": None,
                "config": redact(config),
            },
        )
    except Exception as e:  # noqa: BLE001
        print(f"kaft: could not record the failure in {run_dir}: {e}", file=sys.stderr)
    return line


@contextlib.contextmanager
def hydra_errors_as_one_line() -> Iterator[None]:
    """Turn Hydra's own errors (unknown config option, value of the wrong type, bad override syntax) into one
    ``kaft: error: ...`` line and exit code 2, like kaft's user errors."""
    from hydra.errors import HydraException  # lazy: Hydra takes a second to import; reading a sweep's state does not

    was = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's exceptions reach us instead of printing them
    try:
        yield
    except (HydraException, oc_errors.OmegaConfBaseException) as e:
        if was == "1":
            raise
        from kaft.schema import explain_override_error

        print(f"kaft: error: {explain_override_error(one_line(e))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # e.g. Hydra cannot create the run dir; an OSError inside a job keeps its traceback
        if _started or was == "1":
            raise
        print(f"kaft: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if was is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = was


# ----------------------------------------------------------------------------------------------- job states
def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's override list, in job-number order, from ``multirun.yaml`` (the basic sweeper's expansion of
    ``hydra.sweeper.params`` and the command line's sweep overrides); None if it cannot be worked out."""
    cfg = _yaml(sweep_dir / "multirun.yaml")
    if not isinstance(cfg, Mapping):
        return None
    hydra_cfg = cfg.get("hydra") or {}
    sweeper = hydra_cfg.get("sweeper") or {}
    if "BasicSweeper" not in str(sweeper.get("_target_", "BasicSweeper")):
        return None
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    args += [str(o) for o in ((hydra_cfg.get("overrides") or {}).get("task") or [])]
    try:
        # lazy: Hydra is slow to import; only the Hydra-facing paths need it
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    except Exception:  # noqa: BLE001 - e.g. a glob sweep that needs the config loader
        return None
    return [list(job) for batch in batches for job in batch]


def _run_dirs(sweep_dir: Path) -> dict[int, Path]:
    """Job number -> its run dir (a subdir with ``.hydra/`` or results.json)."""
    out: dict[int, Path] = {}
    for d in job_dirs(sweep_dir):
        num = ((read_results(d) or {}).get("job") or {}).get("num")
        if num is None:
            num = hydra_job(d).get("num")
        try:
            out.setdefault(int(num), d)
        except (TypeError, ValueError):
            continue
    return out


_SLURM_KILL = re.compile(r"(slurmstepd: error: .*(CANCELLED|TIME LIMIT|oom-kill|Exceeded).*|.*oom-kill.*)")


def _submitit_jobs(sweep_dir: Path) -> dict[int, dict]:
    """Job number -> what submitit's folder says: submitted / started / finished (ok or the error's last line)."""
    root = sweep_dir / ".submitit"
    out: dict[int, dict] = {}
    if not root.is_dir():
        return out
    for sub in sorted(root.iterdir()):
        for pkl in sorted(sub.glob("*_submitted.pkl")) if sub.is_dir() else []:
            stem = pkl.name[: -len("_submitted.pkl")]  # "<jobid>" or "<arrayid>_<task>"
            num = None
            try:
                with pkl.open("rb") as fh:
                    num = int(pickle.load(fh).args[2])  # DelayedSubmission(launcher, overrides, key, job_num, ...)
            except Exception:  # noqa: BLE001 - unreadable: fall back to the array task index
                m = re.match(r"^\d+_(\d+)$", stem)
                num = int(m.group(1)) if m else None
            if num is None:
                continue
            info = {"job_id": stem, "started": False, "error": None, "finished": False}
            logs = sorted(sub.glob(f"{stem}_*_log.*"))
            info["started"] = any(p.stat().st_size > 0 or p.suffix == ".out" for p in logs)
            # one result per task: a job of several tasks (tasks_per_node, one rank each) is one job, finished
            # once a task's result is there, failed if any task failed
            results = sorted(sub.glob(f"{stem}_*_result.pkl"))
            info["finished"] = bool(results)
            for result in results:
                try:
                    with result.open("rb") as fh:
                        outcome, value = pickle.load(fh)
                    if outcome != "success" and info["error"] is None:
                        info["error"] = _last_line(str(value))
                except Exception:  # noqa: BLE001
                    pass
            for log in (p for p in logs if p.name.endswith("_log.err")):
                with contextlib.suppress(OSError):
                    kills = [m.group(0).strip() for m in _SLURM_KILL.finditer(log.read_text(errors="replace"))]
                    if kills:
                        info["error"] = kills[-1]
            out[num] = info
    return out


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def job_states(sweep_dir: str | os.PathLike) -> list[dict]:
    """One row per job: ``num``, ``overrides`` (list), ``state`` (one of :data:`STATES`), ``detail`` (the average
    for done jobs, the error's last line for failed ones, ``queued`` for submitted ones), ``path`` (run dir or
    None)."""
    sweep_dir = Path(sweep_dir).expanduser()
    expected = expected_jobs(sweep_dir) or []
    dirs = _run_dirs(sweep_dir)
    sub = _submitit_jobs(sweep_dir)
    nums = sorted(set(range(len(expected))) | set(dirs) | set(sub))
    rows = []
    for num in nums:
        d = dirs.get(num)
        res = read_results(d) if d is not None else None
        overrides = list(expected[num]) if num < len(expected) else []
        if not overrides and d is not None:
            overrides = list((res or {}).get("overrides") or hydra_job(d).get("overrides") or [])
        state, detail = _state(res, d, sub.get(num, {}))
        rows.append(
            {"num": num, "overrides": overrides, "state": state, "detail": detail, "path": str(d) if d else None}
        )
    return rows


def _state(res: dict | None, run_dir: Path | None, sub: Mapping) -> tuple[str, str]:
    """``(state, detail)`` of one job from its results.json, its error.txt and submitit's view of it."""
    from kaft.identity import stale

    differs = stale(res, run_dir) if res is not None and run_dir is not None and res.get("status") == "done" else None
    if differs:
        return "stale", f"results.json is of another config than .hydra/config.yaml ({differs})"
    if res is not None and res.get("status") == "done":
        avg = (res.get("metrics") or {}).get("average")
        return "done", "" if avg is None else f"average {float(avg):.4f}"
    if res is not None and res.get("status") == "failed":
        return "failed", str(res.get("error") or "")
    if res is not None and res.get("status") == "interrupted":
        return "interrupted", f"during {res.get('stage') or 'a stage'}; re-run the same command to resume"
    if run_dir is not None and (run_dir / ERROR_FILE).exists():
        return "failed", error_last_line(run_dir)
    if sub.get("error"):
        return "failed", sub["error"]
    if sub.get("finished"):
        return "failed", f"the job ended without {RESULTS_FILE}"
    if run_dir is not None or sub.get("started"):
        return "running", ""
    return "not started", f"queued (job {sub['job_id']})" if sub else ""


def format_states(rows: Sequence[dict]) -> str:
    if not rows:
        return "(no jobs)"
    sets = [set(r["overrides"]) for r in rows]
    common = set.intersection(*sets) if len(rows) > 1 and all(sets) else set()
    header = ["job", "state", "overrides", "detail"]
    body = [
        [
            str(r["num"]),
            r["state"],
            " ".join(o for o in r["overrides"] if o not in common) or ("(shared only)" if common else "(defaults)"),
            r["detail"],
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)} jobs")
    if common:
        lines.insert(0, "shared overrides: " + " ".join(o for o in rows[0]["overrides"] if o in common))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m kaft.sweep.status SWEEP_DIR   (a multirun/<date>/<time> directory)", file=sys.stderr)
        return 2
    sweep = Path(args[0]).expanduser()
    if not sweep.is_dir():
        print(f"kaft: error: {sweep}: no such directory", file=sys.stderr)
        return 2
    print(f"sweep {sweep}")
    print(format_states(job_states(sweep)))
    return 0


__all__ = [
    "CONFIG_ERRORS",
    "PathError",
    "STATES",
    "check_writable_dir",
    "error_line",
    "expected_jobs",
    "format_states",
    "hydra_errors_as_one_line",
    "job_started",
    "in_multirun",
    "job_states",
    "one_line",
    "record_failure",
]

if __name__ == "__main__":
    sys.exit(main())
