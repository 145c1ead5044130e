"""``python -m kaft.run`` — the CLI of one job or a sweep (``-m``): Hydra composes the config, :mod:`kaft.job` runs
it, and user errors end in one ``kaft: error: ...`` line.
"""

from __future__ import annotations

import sys

from kaft.sweep import receipt

if __name__ == "__main__":  # a finished sweep's re-run is answered from its receipt before Hydra is even imported
    receipt.serve(sys.argv)

import logging  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import kaft.resolvers  # noqa: E402, F401  (the resolvers conf/ uses)
from kaft import identity, interrupt  # noqa: E402
from kaft import job as job_mod  # noqa: E402
from kaft.errors import KaftError  # noqa: E402
from kaft.sweep import status as status_mod  # noqa: E402
from kaft.sweep.status import hydra_errors_as_one_line  # noqa: E402
from kaft.sweep.summary import LAST_SWEEP  # noqa: E402

log = logging.getLogger("kaft")

USER_ERRORS = (KaftError,)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    """One job. A user error (bad data, impossible config) prints one ``kaft: error: ...`` line. In a single run it
    then exits 2 and any other exception raises. In a multirun every failure is recorded instead — ``error.txt``
    (traceback) and ``results.json`` with ``"status": "failed"`` in the job's run dir — and the job returns NaN, so
    the other jobs go on; the sweep summary lists it as failed and the sweep exits 1 (see kaft/sweep/status.py)."""
    status_mod.job_started()
    multirun = status_mod.in_multirun()
    try:
        status_mod.check_writable_dir(cfg.cache_dir, "cache dir (cache_dir / KAFT_CACHE_DIR)")
        results = job_mod.run(cfg)
    except USER_ERRORS + status_mod.CONFIG_ERRORS as e:
        msg = status_mod.one_line(e) if isinstance(e, status_mod.CONFIG_ERRORS) else str(e)
        log.error("%s", msg)
        _end_progress_bars()
        print(f"kaft: error: {msg}", file=sys.stderr)
        if not multirun or isinstance(e, identity.RerunError):  # never record a failure over another run's results
            sys.exit(2)
        if not job_mod.writes_outputs():  # a rank > 0 of a submitit job's tasks: rank 0 records the job
            return math.nan
        job = job_mod.job_info()
        status_mod.record_failure(job["run_dir"], e, job, cfg)
        return math.nan
    except Exception as e:
        if not multirun:
            raise
        log.exception("job failed: %s", e)
        if not job_mod.writes_outputs():  # rank 0 records the job (and fails too: a collective loses this rank)
            return math.nan
        job = job_mod.job_info()
        line = status_mod.record_failure(job["run_dir"], e, job, cfg)
        _end_progress_bars()
        print(
            f"kaft: job {job['num']} failed: {line} (traceback in {Path(job['run_dir']) / 'error.txt'})",
            file=sys.stderr,
        )
        return math.nan
    except KeyboardInterrupt as e:  # Ctrl-C: the run dir says interrupted (kaft.interrupt); the sweep stops too
        _end_progress_bars()
        print(interrupt.line(e), file=sys.stderr)
        sys.exit(interrupt.EXIT_CODE)
    return results["metrics"]["average"]


def _end_progress_bars() -> None:
    """Close the progress bars a failed stage left open, so that kaft's one line starts a line of its own instead
    of being glued to a half-drawn bar (``\r`` without a newline on stderr)."""
    tqdm_std = sys.modules.get("tqdm.std")  # only if a stage drew one: importing tqdm here would cost a start-up
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error line
            pass


def _resolve_cfg_job(argv: list[str]) -> list[str]:
    """``--cfg job`` prints the job config resolved: the losses' own defaults are interpolations of the top-level
    ``alpha`` / ``beta`` (``eaft_alpha: ${kaft_default:${alpha},1.0}``), and the value a job uses is what to show."""
    for flag in ("--cfg", "-c"):
        at = argv.index(flag) + 1 if flag in argv[:-1] else 0
        if at and argv[at] == "job" and "--resolve" not in argv:
            return [*argv[: at + 1], "--resolve", *argv[at + 1 :]]
    return argv


def main() -> None:
    """The CLI (``python -m kaft.run``): Hydra's own errors (unknown config option, a value of the wrong type, bad
    override syntax) also end in one ``kaft: error: ...`` line and exit code 2; a sweep with failed jobs exits 1
    after all its jobs have run."""
    sys.argv = _resolve_cfg_job(sys.argv)
    try:
        with hydra_errors_as_one_line():
            _main()
    except KeyboardInterrupt as e:  # before a job started (composing, the preflight)
        _end_progress_bars()
        print(interrupt.line(e), file=sys.stderr)
        sys.exit(interrupt.EXIT_CODE)
    finally:
        printed = receipt.stop_capture()
    receipt.write(LAST_SWEEP["sweep_dir"], printed, timeless=LAST_SWEEP["timeless"], failed=LAST_SWEEP["failed"])
    if LAST_SWEEP["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
