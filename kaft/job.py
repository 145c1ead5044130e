"""One job, start to finish: data → detect → partition → select → train → evaluate → results.json.

Data flows one way through :func:`run`; each step is a stage of :mod:`kaft.stages` (cached) and the job's outcome is
one ``results.json`` (the contract in :mod:`kaft.results`), also sent to the configured logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kaft import diagnostics, losses, plausibility, schema
from kaft import partition as partition_mod
from kaft import stages as S
from kaft import strategy as strategy_mod
from kaft.cache import Cache
from kaft.items import MCItem
from kaft.results import RESULTS_FILE

log = logging.getLogger("kaft")


@dataclass
class Job:
    """A job's config, cache and what its stages have produced so far."""
    cfg: DictConfig
    cache: Cache
    timer: S.Timer = field(default_factory=S.Timer)
    status: dict = field(default_factory=dict)   # stage -> cache hit?
    keys: dict = field(default_factory=dict)     # stage -> cache key
    train: list = field(default_factory=list)
    evals: dict = field(default_factory=dict)
    fps: dict = field(default_factory=dict)
    model: Any = None
    records: list = field(default_factory=list)
    subsets: list = field(default_factory=list)
    names: list = field(default_factory=list)


def job_info() -> dict:
    """The Hydra job this process runs (run dir, overrides, sweep group, chosen config options)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return {"run_dir": hc.runtime.output_dir, "override_dirname": hc.job.override_dirname,
                "num": hc.job.get("num", 0), "overrides": list(hc.overrides.task),
                "group": str(Path(hc.sweep.dir)).replace(os.sep, "-").strip("-") if multirun else None,
                "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")},
                "name": hc.job.override_dirname or "default"}
    except ValueError:  # called outside Hydra (tests): fall back to the cwd
        return {"run_dir": os.getcwd(), "override_dirname": "", "num": 0, "overrides": [], "group": None,
                "name": "default", "choices": {}}


def score_stats(records: list[dict], items: list[MCItem], subsets: list[int], names: list[str]) -> dict:
    """results.json's ``detection`` block: the Score distribution, per-subset means, strategy flags as rates, and
    what the registered diagnostics add (the testbed's contradiction AUROC)."""
    scores = [r["score"] for r in records]
    hist = [0] * 10
    for s in scores:
        hist[min(int(s * 10), 9)] += 1
    out = {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores), "min": min(scores),
           "max": max(scores), "histogram_10bins": hist,
           "mean_by_subset": {names[k]: statistics.fmean([s for s, g in zip(scores, subsets) if g == k] or [math.nan])
                              for k in range(len(names))}}
    for flag in ("pass_at_n", "high_conf_error", "confident"):  # strategy-specific per-item flags, as rates
        vals = [float(r[flag]) for r in records if flag in r]
        if vals:
            out[f"{flag}_rate"] = statistics.fmean(vals)
    if any("unparsed" in r for r in records):
        total = sum(len(a) for r in records for a in r.get("answers", []))
        out["unparsed_answers"] = sum(r.get("unparsed", 0) for r in records)
        out["unparsed_rate"] = out["unparsed_answers"] / max(1, total)
    out.update(diagnostics.compute_all(scores, items, subsets))
    return out


# ----------------------------------------------------------------------------------------------- the steps
def _load(job: Job) -> None:
    cfg = job.cfg
    with job.timer("data"):
        job.train, job.evals, job.fps = S.stage_data(cfg, job.cache)
        S.validate(cfg, len(job.train))
        plausibility.warn(cfg, job.train, job.evals, job.fps)  # legal but implausible data: one line each
    log.info("data: %d training items, benchmarks %s", len(job.train), {n: len(v) for n, v in job.evals.items()})
    with job.timer("model"):
        job.model, job.keys["model"] = S.stage_model(cfg)


def _probe(job: Job) -> None:
    cfg, model_id = job.cfg, job.keys["model"]
    with job.timer("detect"):
        job.records, job.status["detect"], job.keys["detect"] = S.stage_detect(
            cfg, job.cache, job.model, job.train, model_id, job.fps)
    if job.records and "item" in job.records[0]:  # mc_conversion: train on the multiple-choice versions
        job.train = [MCItem.from_dict(r["item"]) for r in job.records]
    with job.timer("partition"):
        job.subsets, job.names = S.stage_partition(cfg, job.cache, job.records, job.keys["detect"])
    log.info("partition: %s", partition_mod.subset_sizes(job.subsets, int(cfg.partition.k)))
    if strategy_mod.needs_greedy(S.plain(cfg.strategy)):
        with job.timer("greedy"):
            job.records, hit = S.stage_greedy(cfg, job.cache, job.model, job.train, model_id, job.records)
        if hit is not None:
            job.status["greedy"] = hit


def _select(job: Job) -> strategy_mod.Selection:
    cfg = job.cfg
    weights = losses.sample_weights(S.plain(cfg.loss), job.subsets, [r["score"] for r in job.records],
                                    int(cfg.partition.k))
    sel = strategy_mod.select(S.plain(cfg.strategy), job.train, job.records, job.subsets, job.names, weights,
                              int(cfg.seed))
    log.info("strategy %s: training on %d of %d items", cfg.strategy.name, len(sel.items), len(job.train))
    return sel


def _tune(job: Job, sel: strategy_mod.Selection, run_dir: Path) -> dict:
    """Fine-tunes on the selection and evaluates the tuned model; returns its metrics."""
    cfg, model_id = job.cfg, job.keys["model"]
    with job.timer("train"):
        pair_records = sel.records if losses.is_pairwise(S.plain(cfg.loss)) else None
        sampling = losses.sma_sampling(S.plain(cfg.loss))
        if sampling is not None:  # DPO as SMA builds it: its own samples, not detection's
            pair_records, job.status["dpo_samples"] = S.stage_dpo_samples(cfg, job.cache, job.model, sel.items,
                                                                          model_id, sampling)
        tuned, adapter_dir, job.status["train"], job.keys["train"] = S.stage_train(
            cfg, job.cache, job.model, sel.items, sel.weights, model_id, pair_records)

    def tuned_model():
        nonlocal tuned
        if tuned is None:
            from peft import PeftModel

            tuned = PeftModel.from_pretrained(job.model.get()[0], str(adapter_dir))
            tuned.eval()
        return tuned, job.model.get()[1]

    with job.timer("evaluate"):
        metrics, job.status["evaluate"] = S.stage_evaluate(cfg, job.cache, tuned_model, job.evals,
                                                           ("tuned", job.keys["train"]), job.fps, run_dir)
    return metrics


def _evaluate(job: Job, sel: strategy_mod.Selection, run_dir: Path) -> tuple[dict, dict | None, dict | None]:
    """(tuned metrics, base metrics, fine-grained per-subset accuracies); strategy=none evaluates the base only."""
    cfg = job.cfg
    base = None
    if cfg.evaluation.get("base", True) or not sel.train:
        with job.timer("evaluate_base"):
            base, job.status["evaluate_base"] = S.stage_evaluate(cfg, job.cache, job.model.get, job.evals,
                                                                 ("base", job.keys["model"]), job.fps, run_dir)
    metrics = _tune(job, sel, run_dir) if sel.train else base
    fine = None
    if cfg.evaluation.get("fine_grained", False):
        with job.timer("fine_grained"):
            fine = S.fine_grained(cfg, job.cache, job.model, job.keys["model"], job.evals, job.fps, metrics, base,
                                  int(cfg.partition.k), job.names, job.status)
    return metrics, base, fine


def _drop_items(metrics: dict | None) -> dict | None:
    """Metrics without the per-item rows (kept in the cache, too long for results.json and W&B)."""
    if not metrics:
        return metrics
    return {**metrics, "benchmarks": {n: {k: v for k, v in b.items() if k != "items"}
                                      for n, b in metrics["benchmarks"].items()}}


def _results(job: Job, info: dict, sel, metrics: dict, base: dict | None, fine: dict | None) -> dict:
    """The job's results.json (schema: :mod:`kaft.results`)."""
    from kaft import track

    k = int(job.cfg.partition.k)
    names = job.names
    return {
        "status": "done",
        "job": {key: info[key] for key in ("name", "override_dirname", "num", "run_dir")},
        "overrides": info["overrides"],
        "data": {"n_train": len(job.train), "n_eval": {n: len(v) for n, v in job.evals.items()},
                 "fingerprints": job.fps},
        "metrics": _drop_items(metrics),
        "base_metrics": _drop_items(base),
        "delta_vs_base": (metrics["average"] - base["average"]) if base else None,
        "fine_grained": fine,
        "strategy": sel.info,
        "detection": score_stats(job.records, job.train, job.subsets, names),
        "subsets": partition_mod.subset_sizes(job.subsets, k),
        "weights_by_subset": {names[s]: statistics.fmean([w for w, g in zip(sel.weights, sel.subsets) if g == s])
                              for s in range(k) if s in sel.subsets},
        "cache": {stage: ("hit" if hit else "miss") for stage, hit in job.status.items()},
        "cache_keys": {"detect": job.keys["detect"], "train": job.keys.get("train"), "model": job.keys["model"]},
        "timings": job.timer.seconds,
        "versions": track.package_versions(),
        "choices": info["choices"],   # the config group options this job composed (model, dataset, method, ...)
        "config": {**S.plain(job.cfg), "method": info["choices"].get("method")},
    }


def run(cfg: DictConfig) -> dict:
    """Execute one job and return its results (also written to results.json in the run directory)."""
    from kaft import track

    info = job_info()
    plausibility.emit(schema.check_config(cfg))  # the whole config, before anything is built or loaded
    schema.check_method(info["choices"])
    run_dir = Path(info["run_dir"])
    done = finished(run_dir)
    if done is not None and not cfg.get("force", False):
        log.info("already complete: %s (force=true re-runs it)", run_dir / RESULTS_FILE)
        print_results(done)
        return done
    job = Job(cfg, Cache(cfg.cache_dir))
    _load(job)
    _probe(job)
    sel = _select(job)
    metrics, base, fine = _evaluate(job, sel, run_dir)
    results = _results(job, info, sel, metrics, base, fine)
    track.write_results(run_dir, results)
    logger = track.make_logger(S.plain(cfg.logger), run_dir, info["name"], info["group"], S.plain(cfg))
    try:
        logger.log_results(results)
    finally:
        logger.finish()
    print_results(results)
    return results


def finished(run_dir: Path) -> dict | None:
    """The saved results of a job that already completed in ``run_dir`` (a resubmitted job skips itself)."""
    try:
        saved = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("status") == "done" and saved.get("metrics") else None


def print_results(results: dict) -> None:
    m, b = results["metrics"], results.get("base_metrics")
    lines = [f"{'benchmark':<20} {'base':>8} {'tuned':>8}"]
    for name, r in m["benchmarks"].items():
        base = b["benchmarks"][name]["acc"] if b else float("nan")
        lines.append(f"{name:<20} {base:>8.4f} {r['acc']:>8.4f}")
    lines.append(f"{'average':<20} {(b['average'] if b else float('nan')):>8.4f} {m['average']:>8.4f}")
    det = results["detection"]
    print("\n".join(lines))
    print(f"subsets {results['subsets']}  score mean={det['mean']:.3f}{diagnostics.headlines(det)}")
    print(f"cache {results['cache']}  timings {results['timings']}")
    print(f"results: {Path(results['job']['run_dir']) / RESULTS_FILE}")
