"""One table for a whole multirun: every job's overrides, status, per-benchmark accuracy and average.

:class:`SummaryCallback` is a Hydra callback (``hydra.callbacks.summary`` in ``conf/config.yaml``); when a multirun
ends it collects every job under the sweep directory (:func:`kaft.results.job_dirs`), prints one table and writes
``summary.csv`` and ``summary.md`` beside ``multirun.yaml`` (replacing only summaries kaft wrote: kaft/outputs.py).
A job without ``results.json`` (crashed, killed, still queued) is listed as ``missing``. :func:`summarize` and :func:`format_table` work without Hydra:
``python -m kaft.sweep.summary SWEEP_DIR`` prints the table of a finished (or running) sweep. The paper's table of
the sweep is a callback of its own (``analysis.callback.PaperTableCallback``), and kaft does not depend on it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from kaft.errors import KaftError
from kaft.outputs import write_text
from kaft.results import ERROR_FILE, SUMMARY_CSV, SUMMARY_MD, error_last_line, hydra_job, job_dirs, load_results
from kaft.sweep import receipt

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- collecting
def _row(sweep_dir: Path, job_dir: Path) -> dict:
    row: dict[str, Any] = {
        "path": job_dir.relative_to(sweep_dir).as_posix(),
        "num": None,
        "override_dirname": "",
        "overrides": [],
        "status": "missing",
        "accs": {},
        "average": None,
        "error": None,
    }
    res, problem = load_results(job_dir)
    if problem:
        row["status"], row["error"] = "unreadable", problem
    if res is None:
        row.update({k: v for k, v in hydra_job(job_dir).items() if v is not None})
        if row["status"] == "missing" and (job_dir / ERROR_FILE).exists():  # failed before results.json was written
            row["status"], row["error"] = "failed", error_last_line(job_dir)
        return row
    job = res.get("job") or {}
    info = hydra_job(job_dir) if job.get("num") is None else {}
    row["num"] = job.get("num", info.get("num"))
    row["override_dirname"] = job.get("override_dirname") or info.get("override_dirname") or ""
    row["overrides"] = list(res.get("overrides") or info.get("overrides") or [])
    row["status"] = str(res.get("status") or "done")
    row["error"] = res.get("error")
    if row["status"] == "failed" and not row["error"] and (job_dir / ERROR_FILE).exists():
        row["error"] = error_last_line(job_dir)
    metrics = res.get("metrics") or {}
    for name, r in (metrics.get("benchmarks") or {}).items():
        row["accs"][name] = _float((r or {}).get("acc"))
    row["average"] = _float(metrics.get("average"))
    return row


def _float(v) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _sort_key(row: dict):
    num = row["num"]
    try:
        num = int(num)
    except (TypeError, ValueError):
        num = None
    return (num is None, num if num is not None else 0, row["override_dirname"], row["path"])


def summarize(sweep_dir: str | os.PathLike) -> list[dict]:
    """One row per job under ``sweep_dir``, in job-number order.

    A row: ``path`` (relative to the sweep dir), ``num``, ``override_dirname``, ``overrides`` (list),
    ``status`` (``done`` / ``failed`` / ``missing`` / ``unreadable``), ``accs`` ({benchmark: acc}), ``average``,
    ``error``.
    """
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        return []
    return sorted((_row(sweep_dir, d) for d in job_dirs(sweep_dir)), key=_sort_key)


def benchmarks(rows: Sequence[dict]) -> list[str]:
    """Benchmark names over all rows, in first-seen order."""
    names: dict[str, None] = {}
    for r in rows:
        for n in r["accs"]:
            names.setdefault(n, None)
    return list(names)


# ----------------------------------------------------------------------------------------------- formatting
def common_overrides(rows: Sequence[dict]) -> list[str]:
    """Overrides every job of the sweep shares (paths, sizes): shown once, not in every row."""
    sets = [set(r["overrides"]) for r in rows if r["overrides"]]
    if len(sets) < 2 or len(sets) != len(rows):
        return []
    common = set.intersection(*sets)
    return [o for o in rows[0]["overrides"] if o in common]


def _label(row: dict, common: Sequence[str] = ()) -> str:
    if row["overrides"]:
        return ",".join(o for o in row["overrides"] if o not in common) or "(shared only)"
    return row["override_dirname"] or "(defaults)"


def _cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    names = benchmarks(rows)
    common = common_overrides(rows)
    header = ["job", "overrides", "status", *names, "average"]

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    body = [
        [
            "" if r["num"] is None else str(r["num"]),
            _label(r, common),
            r["status"],
            *(f(r["accs"].get(n)) for n in names),
            f(r["average"]),
        ]
        for r in rows
    ]
    return header, body


def format_table(rows: Sequence[dict]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    if not rows:
        return "(no jobs)"
    header, body = _cells(rows)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = [False, False, False] + [True] * (len(header) - 3)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(b) for b in body]
    return "\n".join(out)


def format_markdown(rows: Sequence[dict]) -> str:
    header, body = _cells(rows)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    out = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---:" if i == 0 or i >= 3 else "---" for i in range(len(header))) + " |",
    ]
    out += ["| " + " | ".join(esc(c) for c in b) + " |" for b in body]
    return "\n".join(out) + "\n"


def format_csv(rows: Sequence[dict]) -> str:
    names = benchmarks(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["job", "override_dirname", "overrides", "status", *(f"acc/{n}" for n in names), "average", "path", "error"]
    )
    for r in rows:
        w.writerow(
            [
                "" if r["num"] is None else r["num"],
                r["override_dirname"],
                " ".join(r["overrides"]),
                r["status"],
                *("" if r["accs"].get(n) is None else repr(r["accs"][n]) for n in names),
                "" if r["average"] is None else repr(r["average"]),
                r["path"],
                r["error"] or "",
            ]
        )
    return buf.getvalue()


def write_summary(sweep_dir: str | os.PathLike, rows: Sequence[dict] | None = None) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir`` atomically; returns their paths."""
    sweep_dir = Path(sweep_dir)
    rows = summarize(sweep_dir) if rows is None else rows
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    # never over a user's file of the same name (kaft/outputs.py); the first lines mark summaries from before that
    write_text(csv_path, format_csv(rows), "the sweep summary", legacy_header="job,override_dirname,overrides,status,")
    write_text(
        md_path,
        f"# Sweep summary: {sweep_dir}\n\n" + format_markdown(rows),
        "the sweep summary",
        legacy_header="# Sweep summary: ",
    )
    return csv_path, md_path


# ----------------------------------------------------------------------------------------------- Hydra
def format_failures(rows: Sequence[dict]) -> str:
    """One line per failed job: its number, overrides and the error's last line."""
    common = common_overrides(rows)
    return "\n".join(
        f"failed: job {r['num']} ({_label(r, common)}): {r['error'] or 'no error recorded'}"
        + (f"  [{r['path']}/{ERROR_FILE}]" if r.get("path") else "")
        for r in rows
        if r["status"] == "failed"
    )


# the number of failed jobs of the last sweep summarised in this process: ``python -m kaft.run -m`` exits 1 if > 0
LAST_SWEEP: dict[str, Any] = {"failed": 0, "sweep_dir": None, "timeless": False}


def _timeless(config) -> bool:
    """Whether the same command would run the same jobs again, so that a receipt may vouch for it
    (kaft/sweep/receipt.py): the config holds no ``${now:...}`` (a sweep dir named by the time is another sweep when
    run again) and the sweeper is Hydra's basic one (a search sweeper such as Optuna picks its next trials from what
    it saw, so its jobs are not a function of the command line)."""
    from omegaconf import OmegaConf

    try:
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
        basic = sweeper.endswith(".BasicSweeper")
        return basic and "now:" not in OmegaConf.to_yaml(config, resolve=False)
    except Exception:  # noqa: BLE001 - in doubt, no receipt
        return False


class SummaryCallback(Callback):
    """Prints one table of all jobs and writes summary.csv / summary.md when a multirun ends; failed jobs get one
    line each with their error, and their count is left in :data:`LAST_SWEEP` (kaft.run's CLI then exits 1)."""

    def __init__(self, print_table: bool = True, **_: Any):
        self.print_table = print_table

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        receipt.start_capture()  # the first sweep-end callback: what the sweep's end prints, a receipt replays
        failed = self._summarize(config)
        LAST_SWEEP.update(failed=failed, sweep_dir=str(config.hydra.sweep.dir), timeless=_timeless(config))
        if failed:
            print(
                f"kaft: {failed} job(s) of the sweep failed (error.txt in their run dirs; "
                f"python -m kaft.sweep.status {config.hydra.sweep.dir})",
                file=sys.stderr,
                flush=True,
            )

    def _summarize(self, config) -> int:
        """Print and write the summary; returns the number of failed jobs."""
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            rows = summarize(sweep_dir)
            if not rows:
                log.warning("summary: no jobs found under %s", sweep_dir)
                return 0
            csv_path, md_path = write_summary(sweep_dir, rows)
            failures = format_failures(rows)
            if self.print_table:
                counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
                common = common_overrides(rows)
                shared = f"shared overrides: {' '.join(common)}\n" if common else ""
                print(
                    f"\nkaft sweep summary: {sweep_dir}  ({', '.join(f'{n} {s}' for s, n in counts.items())})\n"
                    f"{shared}{format_table(rows)}\n{failures + chr(10) if failures else ''}"
                    f"(also {csv_path.name}, {md_path.name} there)\n",
                    flush=True,
                )
            return sum(r["status"] == "failed" for r in rows)
        except Exception as e:  # noqa: BLE001 - a summary must never turn a finished sweep into a failure
            log.warning("summary: could not summarise the sweep: %s", e)
            return 0


__all__ = [
    "LAST_SWEEP",
    "SummaryCallback",
    "benchmarks",
    "common_overrides",
    "format_csv",
    "format_failures",
    "format_markdown",
    "format_table",
    "summarize",
    "write_summary",
]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m kaft.sweep.summary SWEEP_DIR", file=sys.stderr)
        return 2
    rows = summarize(args[0])
    print(format_table(rows))
    if rows:
        try:
            write_summary(args[0], rows)
        except KaftError as e:  # a summary.csv / .md there that kaft did not write (kaft/outputs.py)
            print(f"kaft: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
