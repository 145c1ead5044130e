"""The results contract: what a finished job leaves behind, how a sweep's jobs are found and read, and the metrics
shared by everything that reads them.

Every reader (``python -m kaft.sweep.status``, the sweep summary, ``kaft.export``, ``analysis``) walks a sweep and
reads a job here, so they agree on which directories are jobs and on what an unreadable file means. A job's run
directory holds :data:`RESULTS_FILE` (:class:`Results`; also written for a failed job) and, when the job raised,
:data:`ERROR_FILE` (the traceback). A sweep directory gets :data:`SUMMARY_CSV` / :data:`SUMMARY_MD` when it ends.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import yaml

if TYPE_CHECKING:  # pandas is imported by sweep_frame only: the job-state readers stay light
    import pandas as pd  # lazy: pandas is slow to import; only sweep_frame needs it

RESULTS_FILE = "results.json"  # a job's results, in its run directory
ERROR_FILE = "error.txt"  # a failed job's traceback, beside its results.json
SUMMARY_CSV = "summary.csv"  # the sweep summary, in the sweep directory
SUMMARY_MD = "summary.md"
SKIP_DIRS = frozenset({"wandb", ".hydra", ".submitit", "__pycache__"})  # never hold jobs


class Results(TypedDict, total=False):
    """The top-level keys of ``results.json`` (written by :func:`kaft.job.run`; a failed job's by
    :func:`kaft.sweep.status.record_failure`, which writes status, error, error_type, error_file, job, overrides,
    ``metrics: null`` and config)."""

    status: str  # "done" | "failed" | "interrupted" (Ctrl-C: kaft.interrupt; ``stage`` names where)
    job: dict  # name, override_dirname, num, run_dir (Hydra's view of the job)
    overrides: list[str]  # the job's command-line overrides
    data: dict  # n_train, n_eval {benchmark: n}, fingerprints {train, <benchmark>: ...}
    metrics: dict | None  # the evaluated model: benchmarks {name: {acc, acc_stderr, n, ...}}, average. A free-form
    # benchmark (kaft.evaluate_generative) adds metric: "generative", verifier (its name), n_judged, no_verdict
    # (responses without a verdict, left out of acc), exact_match, exact_match_stderr (lm-eval's); its acc is the
    # verifier's fraction correct (null when no response got a verdict; average is then over the others).
    # Multiple-choice entries have no "metric" key: their acc is lm-eval's log-likelihood accuracy.
    base_metrics: dict | None  # the same for the base model (null when not evaluated)
    delta_vs_base: float | None  # metrics.average - base_metrics.average
    fine_grained: dict | None  # per-subset accuracies (evaluation.fine_grained); a free-form benchmark's entry is
    # {"skipped": why} (kaft.stages.FREEFORM_FINE_GRAINED)
    strategy: dict  # what the data strategy selected
    train_target: dict | None  # what each item trained on: kind (train.target resolved: letter | option | response)
    # and mean_label_tokens (label tokens per training example; of the chosen responses for DPO); null: no training
    detection: dict  # Score statistics: mean, std, min, max, histogram_10bins, mean_by_subset, flag
    # rates, and the registered diagnostics' values (testbed: auroc_contradict, ...)
    diagnosis: dict  # only with diagnosis.enabled=true (kaft.diagnosis, docs/diagnosis.md): n_items, unlearned,
    # unlearned_rate, unlearned_by_kind {kind: rate within the kind}, unlearned_share_by_kind {kind: share of the
    # unlearned set}, kinds {kind: {n, unlearned, rate, share}}, train_accuracy, bon_accuracy, pass_rate_mean,
    # base_accuracy, base_high_conf_error_rate, js_mean, ren {consistency_mean, kl_mean}, settings, and items: one
    # row per trained item in training order (index, id, kind, gold, pass_rate, runs, bon_pred, bon_correct,
    # unlearned, train_pred, train_correct, base_pred, base_conf, base_correct, base_high_conf_error, js,
    # ren_consistency, ren_kl, p_sft, p_base, p_icl); {"skipped": why, "settings"} when nothing could be diagnosed
    subsets: dict  # subset name -> items in it
    weights_by_subset: dict  # mean sample weight per subset name
    cache: dict  # stage -> "hit" | "miss"
    cache_keys: dict  # detect, train, model (and diagnose): the artifacts behind the result (kaft.export reads them)
    timings: dict  # stage -> seconds
    versions: dict  # package -> version
    choices: dict  # config group -> option the job composed (model, dataset, method, ...)
    config: dict  # the resolved job config, plus the method's name
    identity: dict  # sha256 + parts {config, data, model, code}: what a re-run compares (kaft.identity)
    stage: str  # interrupted jobs: the stage that was running
    error: str  # failed jobs: the error's last line
    error_type: str
    error_file: str


# ----------------------------------------------------------------------------------------------- walking a sweep
def job_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """The job directories under ``sweep_dir`` (not ``sweep_dir`` itself), in sorted path order: each directory
    holding ``results.json`` or Hydra's ``.hydra/`` folder (a job that has started but not finished). A job's own
    output tree is not searched further, nor are ``wandb``, ``.hydra``, ``.submitit`` folders."""
    sweep_dir = Path(sweep_dir)
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        here = Path(root)
        if here != sweep_dir and (RESULTS_FILE in files or ".hydra" in dirs):
            found.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
    return found


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def hydra_job(job_dir: str | os.PathLike) -> dict:
    """``num`` / ``override_dirname`` / ``overrides`` of a job from Hydra's own files, for a job with no (readable)
    results.json; falls back to the ``<num>_<overrides>`` directory name, and to ``overrides: []``."""
    job_dir = Path(job_dir)
    info: dict[str, Any] = {}
    try:
        hc = (_yaml(job_dir / ".hydra" / "hydra.yaml") or {})["hydra"]
        info["num"] = hc.get("job", {}).get("num")
        info["override_dirname"] = hc.get("job", {}).get("override_dirname")
        info["overrides"] = list((hc.get("overrides") or {}).get("task") or [])
    except Exception:  # noqa: BLE001 - no or unreadable Hydra files: fall back to the directory name
        m = re.match(r"^(\d+)(?:_(.*))?$", job_dir.name)
        if m:
            info["num"], info["override_dirname"] = int(m.group(1)), m.group(2) or ""
    if "overrides" not in info:
        try:
            info["overrides"] = list(_yaml(job_dir / ".hydra" / "overrides.yaml") or [])
        except Exception:  # noqa: BLE001
            info["overrides"] = []
    return info


# ----------------------------------------------------------------------------------------------- reading a job
def load_results(job_dir: str | os.PathLike) -> tuple[dict | None, str | None]:
    """``(results, problem)``: the job's results.json as a dict, or None with ``problem`` saying why when the file
    exists but cannot be used (``"results.json: <error>"``); ``(None, None)`` when there is no file."""
    path = Path(job_dir) / RESULTS_FILE
    if not path.exists():
        return None, None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(res, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return None, f"{RESULTS_FILE}: {e}"
    return res, None


def read_results(job_dir: str | os.PathLike) -> dict | None:
    """The job's results.json as a dict; None if it is missing or unreadable (a job still running, a killed one)."""
    return load_results(job_dir)[0]


def error_last_line(job_dir: str | os.PathLike) -> str:
    """The last non-empty line of the job's error.txt (``Type: message``); "" when there is none."""
    try:
        text = (Path(job_dir) / ERROR_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------------------------- one row per job
KEYS = {  # column -> path into results.json
    "loss": ("config", "loss", "name"),
    "alpha": ("config", "loss", "alpha"),  # what the loss used (each loss resolves its own default)
    "beta": ("config", "loss", "beta"),
    "eaft_alpha": ("config", "loss", "eaft_alpha"),
    "partition": ("config", "partition", "k"),
    "seed": ("config", "seed"),
    "model": ("config", "model", "name"),
    "dataset": ("config", "dataset", "name"),
    "average": ("metrics", "average"),
    "base_average": ("base_metrics", "average"),
    "delta_vs_base": ("delta_vs_base",),
    "score_mean": ("detection", "mean"),
    "auroc_contradict": ("detection", "auroc_contradict"),
    "status": ("status",),
    "method": ("config", "method"),
    "strategy": ("config", "strategy", "name"),
    "subset": ("config", "strategy", "subset"),
    "ratio": ("config", "strategy", "ratio"),
    "data_seed": ("config", "strategy", "data_seed"),
    "detection": ("config", "detection", "name"),
    "score_std": ("detection", "std"),
}


def dig(obj: Any, path: Sequence[str]) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a key is missing or a level is not a mapping."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def flatten(res: dict) -> dict:
    """One flat row of a results.json: the :data:`KEYS` columns, ``acc/<benchmark>``, ``time/<stage>``,
    ``run_dir``. Results written before each loss resolved its own alpha / beta fall back to the top-level ones."""
    row = {col: dig(res, path) for col, path in KEYS.items()}
    for col in ("alpha", "beta"):
        if row[col] is None:
            row[col] = dig(res, ("config", col))
    if isinstance(row["method"], dict):  # a method group config, if one is ever stored as a mapping
        row["method"] = row["method"].get("name")
    for name, r in (dig(res, ("metrics", "benchmarks")) or {}).items():
        row[f"acc/{name}"] = r.get("acc") if isinstance(r, dict) else None
    for stage, sec in (res.get("timings") or {}).items():
        row[f"time/{stage}"] = sec
    row["run_dir"] = dig(res, ("job", "run_dir"))
    return row


def result_dirs(root: str | os.PathLike) -> list[Path]:
    """The directories under ``root`` that hold results.json: ``root`` itself when it is a run dir, else the jobs of
    a sweep dir or of a folder of sweeps (:func:`job_dirs`)."""
    root = Path(root)
    if (root / RESULTS_FILE).is_file():
        return [root]
    return [d for d in job_dirs(root) if (d / RESULTS_FILE).is_file()]


def sweep_frame(root: str | os.PathLike) -> pd.DataFrame:
    """One row per readable results.json under ``root`` (:func:`result_dirs`): the :func:`flatten` columns (in the
    order first seen) and last ``job_dir`` (the job's directory, as a string under ``root``). An unreadable file is reported on stderr and
    skipped. No results: an empty frame with the :data:`KEYS` columns, ``run_dir`` and ``job_dir``."""
    import pandas as pd  # lazy: pandas is slow to import; only sweep_frame needs it

    rows = []
    for d in result_dirs(root):
        res, problem = load_results(d)
        if res is None:
            print(f"skipping {d}: {problem}", file=sys.stderr)
            continue
        rows.append({**flatten(res), "job_dir": str(d)})
    if not rows:
        return pd.DataFrame(columns=[*KEYS, "run_dir", "job_dir"])
    columns = [*dict.fromkeys(c for r in rows for c in r if c != "job_dir"), "job_dir"]  # first seen, job_dir last
    return pd.DataFrame.from_records(rows, columns=columns)


# ----------------------------------------------------------------------------------------------- metrics
def auroc(pos_scores: Sequence[float], neg_scores: Sequence[float]) -> float:
    """P(score of a random negative > score of a random positive) with ties counted half: how well a LOW score
    flags the positives (e.g. contradicting items). NaN when either side is empty."""
    if not pos_scores or not neg_scores:
        return float("nan")
    wins = sum((n > p) + 0.5 * (n == p) for p in pos_scores for n in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))


__all__ = [
    "ERROR_FILE",
    "KEYS",
    "RESULTS_FILE",
    "Results",
    "SKIP_DIRS",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "auroc",
    "dig",
    "error_last_line",
    "flatten",
    "hydra_job",
    "job_dirs",
    "load_results",
    "read_results",
    "result_dirs",
    "sweep_frame",
]
