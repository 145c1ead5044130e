"""One job, start to finish: data → detect → partition → select → train → evaluate → diagnose → track.

Data flows one way through :func:`run`; each step is a stage of :mod:`kaft.stages` (cached) and the job's outcome is
one ``results.json`` (the contract in :mod:`kaft.results`), also sent to the configured logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kaft import diagnostics, identity, interrupt, plausibility, schema, track, trainset
from kaft import partition as partition_mod
from kaft import stages as S
from kaft import strategy as strategy_mod
from kaft.cache import Cache
from kaft.items import MCItem, is_freeform
from kaft.results import RESULTS_FILE

log = logging.getLogger("kaft")


@dataclass
class Job:
    """A job's config, cache and what its stages have produced so far; ``ctx`` (what every stage after data and
    model reads) exists once those two have run."""

    cfg: DictConfig
    cache: Cache
    timer: S.Timer = field(default_factory=S.Timer)
    cache_hits: dict = field(default_factory=dict)  # stage -> came from the cache? (results.json's "cache")
    keys: dict = field(default_factory=dict)  # stage -> cache key
    ctx: S.StageContext | None = None
    train: list = field(default_factory=list)
    evals: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    subsets: list = field(default_factory=list)
    names: list = field(default_factory=list)
    train_target: dict | None = None  # results.json's train_target (None: nothing trained)
    tuned: tuple | None = None  # (tuned model, tokenizer) once a stage loaded them (kaft.job._tuned_model)

    def hit(self, stage: str, result: S.StageResult) -> Any:
        """Record a stage's cache hit (unless it had nothing to compute) and return its value."""
        if result.cache_hit is not None:
            self.cache_hits[stage] = result.cache_hit
        return result.value


def job_info() -> dict:
    """The Hydra job this process runs (run dir, overrides, sweep group, chosen config options)."""
    try:
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return {
            "run_dir": hc.runtime.output_dir,
            "override_dirname": hc.job.override_dirname,
            "num": hc.job.get("num", 0),
            "overrides": list(hc.overrides.task),
            "group": str(Path(hc.sweep.dir)).replace(os.sep, "-").strip("-") if multirun else None,
            "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")},
            "name": hc.job.override_dirname or "default",
        }
    except ValueError:  # called outside Hydra (tests): fall back to the cwd
        return {
            "run_dir": os.getcwd(),
            "override_dirname": "",
            "num": 0,
            "overrides": [],
            "group": None,
            "name": "default",
            "choices": {},
        }


def score_stats(records: list[dict], items: list[MCItem], subsets: list[int], names: list[str]) -> dict:
    """results.json's ``detection`` block: the Score distribution, per-subset means, strategy flags as rates, and
    what the registered diagnostics add (the testbed's contradiction AUROC)."""
    scores = [r["score"] for r in records]
    hist = [0] * 10
    for s in scores:
        hist[min(int(s * 10), 9)] += 1
    out = {
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "min": min(scores),
        "max": max(scores),
        "histogram_10bins": hist,
        "mean_by_subset": {
            names[k]: statistics.fmean([s for s, g in zip(scores, subsets) if g == k] or [math.nan])
            for k in range(len(names))
        },
    }
    for flag in ("any_correct", "high_conf_error", "confident"):  # strategy-specific per-item flags, as rates
        vals = [float(r[flag]) for r in records if flag in r]
        if vals:
            out[f"{flag}_rate"] = statistics.fmean(vals)
    if all("high_conf_error" in r for r in records):  # per subset: how much of the wrong subset the base model
        # confidently contradicts rather than is unsure of (issue 24: what a user can read off their own data)
        out["high_conf_error_by_subset"] = {
            names[k]: statistics.fmean(
                [float(r["high_conf_error"]) for r, g in zip(records, subsets) if g == k] or [math.nan]
            )
            for k in range(len(names))
        }
    if any("unparsed" in r for r in records):
        total = sum(len(a) for r in records for a in r.get("answers", r.get("verdicts", [])))  # generative: verdicts
        out["unparsed_answers"] = sum(r.get("unparsed", 0) for r in records)
        out["unparsed_rate"] = out["unparsed_answers"] / max(1, total)
    out.update(diagnostics.compute_all(scores, items, subsets))
    return out


# ----------------------------------------------------------------------------------------------- the steps
def _data(job: Job) -> None:
    cfg = job.cfg
    with job.timer("data"):
        job.train, job.evals, fps = S.stage_data(cfg, job.cache)
        S.validate(cfg, len(job.train))
        S.target_kind(cfg, job.train)  # a response target without responses stops here, before the model loads
        trainset.check_context(cfg, job.train)  # so does train.context=true without contexts
        plausibility.warn(cfg, job.train, job.evals, fps)  # legal but implausible data: one line each
    log.info("data: %d training items, benchmarks %s", len(job.train), {n: len(v) for n, v in job.evals.items()})
    with job.timer("model"):
        model, job.keys["model"] = S.stage_model(cfg)
    job.ctx = S.StageContext(cfg, job.cache, model, job.keys["model"], fps)


def _detect(job: Job) -> None:
    with job.timer("detect"):
        det = S.stage_detect(job.ctx, job.train)
        job.records, job.keys["detect"] = job.hit("detect", det), det.key
    # mc_conversion detects on multiple-choice versions; training keeps the free-form items (ILP §3.1.1) unless
    # train.target=letter|option asks for the converted ones (kaft's own reading)
    job.train = S.training_items(job.cfg, job.train, job.records)


def _partition(job: Job) -> None:
    with job.timer("partition"):
        job.subsets, job.names = S.stage_partition(job.ctx, job.records, job.keys["detect"]).value
    log.info("partition: %s", partition_mod.subset_sizes(job.subsets, int(job.cfg.partition.k)))
    if strategy_mod.needs_greedy(S.plain(job.cfg.strategy)):  # the model's own greedy answers, for the strategy
        with job.timer("greedy"):
            job.records = job.hit("greedy", S.stage_greedy(job.ctx, job.train, job.records))


def _select(job: Job) -> strategy_mod.Selection:
    from kaft import losses  # lazy: kaft.losses imports torch, which a skipped (finished) job never needs

    cfg = job.cfg
    weights = losses.sample_weights(
        S.plain(cfg.loss), job.subsets, [r["score"] for r in job.records], int(cfg.partition.k)
    )
    sel = strategy_mod.select(
        S.plain(cfg.strategy), job.train, job.records, job.subsets, job.names, weights, int(cfg.seed)
    )
    log.info("strategy %s: training on %d of %d items", cfg.strategy.name, len(sel.items), len(job.train))
    return sel


def _evaluate_base(job: Job, sel: strategy_mod.Selection, run_dir: Path) -> dict | None:
    """The base model's metrics (None with ``evaluation.base=false``, unless the strategy trains nothing)."""
    if not (job.cfg.evaluation.get("base", True) or not sel.train):
        return None
    with job.timer("evaluate_base"):
        return job.hit(
            "evaluate_base",
            S.stage_evaluate(job.ctx, job.ctx.model.get, job.evals, ("base", job.keys["model"]), run_dir),
        )


def _train(job: Job, sel: strategy_mod.Selection) -> S.Trained | None:
    """Fine-tunes on the selection (None when the strategy trains nothing)."""
    from kaft import losses  # lazy: see _select

    if not sel.train:
        return None
    loss = S.plain(job.cfg.loss)
    with job.timer("train"):
        pair_records = sel.records if losses.is_pairwise(loss) else None
        sampling = losses.sma_sampling(loss, is_freeform(sel.items))  # free-form: whole responses (kaft.trainset)
        if sampling is not None:  # DPO as SMA builds it: its own samples, not detection's
            pair_records = job.hit("dpo_samples", S.stage_dpo_samples(job.ctx, sel.items, sampling))
        items = trainset.contextualize(job.cfg, sel.items)  # Ren et al.'s contextualized IFT: training prompts only
        result = S.stage_train(job.ctx, items, sel.weights, pair_records)
        if job.cfg.train.get("finetune") == "full" and result.value.model is not None:
            job.ctx.model.release()  # train=full trained the base model in place: a later get() loads it again
        job.keys["train"] = result.key
        trained = job.hit("train", result)
    job.train_target = S.train_target(trained)
    return trained


def _tuned_model(job: Job, trained: S.Trained):
    """``get()`` of the tuned model and tokenizer, loaded once and kept on the job (evaluation and diagnosis share
    it; a second adapter load would wrap the already wrapped base model)."""

    def get():
        if job.tuned is None:
            job.tuned = _load_tuned(job, trained)
        return job.tuned

    return get


def _load_tuned(job: Job, trained: S.Trained) -> tuple[Any, Any]:
    """The model trained in this process, else its cached adapter loaded onto the base model; under ``train=full``
    the saved model with its tokenizer (kaft.train.full), no adapter on the base."""
    if job.cfg.train.get("finetune") == "full":
        from kaft.train.full import tuned_pair  # lazy: kaft.train imports torch

        return tuned_pair(trained.model, S.plain(job.cfg.model), trained.adapter_dir, job.cfg.get("device"))
    model = trained.model
    if model is None:
        from peft import PeftModel  # lazy: only a cached adapter with an uncached stage needs peft

        from kaft.train.config import peft_wrap  # lazy: kaft.train imports torch

        with peft_wrap():
            model = PeftModel.from_pretrained(job.ctx.model.get()[0], str(trained.adapter_dir))
        model.eval()
    return model, job.ctx.model.get()[1]


def _evaluate(job: Job, trained: S.Trained | None, base: dict | None, run_dir: Path) -> dict:
    """The tuned model's metrics (the base model's when nothing was trained); its adapter (under ``train=full`` the
    saved model) loads only when the evaluation is not cached."""
    if trained is None:
        return base
    with job.timer("evaluate"):
        return job.hit(
            "evaluate",
            S.stage_evaluate(job.ctx, _tuned_model(job, trained), job.evals, ("tuned", job.keys["train"]), run_dir),
        )


def _diagnose_training(job: Job, sel: strategy_mod.Selection, trained: S.Trained | None) -> dict | None:
    """results.json's ``diagnosis`` block (``diagnosis.enabled=true``; :mod:`kaft.diagnosis`): the tuned model
    re-answers the items it trained on (ILP §3.1.2), against its base model; None when off."""
    from kaft.diagnosis import settings as diag_settings
    from kaft.diagnosis import stage as diag

    s = diag_settings.parse(S.plain(job.cfg.get("diagnosis")))
    if not s.enabled:
        return None
    items = diag.diagnosis_items(sel.items, job.records) if trained is not None else None
    if items is None:
        why = "nothing was trained" if trained is None else "the training items have no multiple-choice version"
        log.warning("diagnosis skipped: %s", why)
        return {"skipped": why, "settings": asdict(s)}
    with job.timer("diagnose"):
        result = diag.stage_diagnose(job.ctx, items, job.keys["train"], _tuned_model(job, trained))
        job.keys["diagnose"] = result.key
        rows = job.hit("diagnose", result)
    from kaft.diagnosis import causes  # lazy: numpy, only with the diagnosis on

    attributed = causes.causes_block(rows, items, s.causes)  # ILP's five causes, each unlearned item's first match
    rows = [{**row, "cause": cause} for row, cause in zip(rows, attributed["per_item"])]
    return {**diag.summarize(rows, s), "causes": attributed["block"], "items": rows}


def _fine_grained(job: Job, metrics: dict, base: dict | None) -> dict | None:
    """KaFT Table 1's per-subset accuracies (``evaluation.fine_grained=true``), else None."""
    if not job.cfg.evaluation.get("fine_grained", False):
        return None
    with job.timer("fine_grained"):
        fine, hits = S.fine_grained(job.ctx, job.evals, metrics, base, job.names)
    job.cache_hits.update(hits)
    return fine


def _diagnose(job: Job) -> dict:
    """results.json's ``detection`` block: the Score statistics and what the registered diagnostics
    (:mod:`kaft.diagnostics`) add."""
    return score_stats(job.records, job.train, job.subsets, job.names)


def _track(job: Job, info: dict, results: dict, run_dir: Path) -> None:
    """results.json in the run directory, and the configured logger."""
    track.write_results(run_dir, results)
    logger = track.make_logger(S.plain(job.cfg.logger), run_dir, info["name"], info["group"], S.plain(job.cfg))
    try:
        logger.log_results(results)
    finally:
        logger.finish()


def _drop_items(metrics: dict | None) -> dict | None:
    """Metrics without the per-item rows (kept in the cache, too long for results.json and W&B)."""
    if not metrics:
        return metrics
    return {
        **metrics,
        "benchmarks": {n: {k: v for k, v in b.items() if k != "items"} for n, b in metrics["benchmarks"].items()},
    }


def _results(job: Job, info: dict, sel, metrics: dict, base: dict | None, fine: dict | None, detection: dict) -> dict:
    """The job's results.json (schema: :mod:`kaft.results`); ``diagnosis`` is added by :func:`_execute`."""
    k = int(job.cfg.partition.k)
    names = job.names
    return {
        "status": "done",
        "job": {key: info[key] for key in ("name", "override_dirname", "num", "run_dir")},
        "overrides": info["overrides"],
        "data": {
            "n_train": len(job.train),
            "n_eval": {n: len(v) for n, v in job.evals.items()},
            "fingerprints": job.ctx.fps,
        },
        "metrics": _drop_items(metrics),
        "base_metrics": _drop_items(base),
        "delta_vs_base": (metrics["average"] - base["average"]) if base else None,
        "fine_grained": fine,
        "strategy": sel.info,
        "train_target": job.train_target,
        "detection": detection,
        "subsets": partition_mod.subset_sizes(job.subsets, k),
        "weights_by_subset": {
            names[s]: statistics.fmean([w for w, g in zip(sel.weights, sel.subsets) if g == s])
            for s in range(k)
            if s in sel.subsets
        },
        "cache": {stage: ("hit" if hit else "miss") for stage, hit in job.cache_hits.items()},
        "cache_keys": {
            "detect": job.keys["detect"],
            "train": job.keys.get("train"),
            "model": job.keys["model"],
            **({"diagnose": job.keys["diagnose"]} if "diagnose" in job.keys else {}),
        },
        "timings": job.timer.seconds,
        "versions": track.package_versions(),
        "choices": info["choices"],  # the config group options this job composed (model, dataset, method, ...)
        "config": {**S.plain(job.cfg), "method": info["choices"].get("method")},
        "identity": identity.make(
            identity.config_part(job.cfg, info["choices"].get("method")), job.ctx.fps, job.keys["model"]
        ),
    }


def run(cfg: DictConfig) -> dict:
    """Execute one job and return its results (also written to results.json in the run directory). A run dir that
    holds a done results.json of the same identity is skipped; of another identity, refused (:mod:`kaft.identity`).
    A Ctrl-C marks the run dir interrupted (:mod:`kaft.interrupt`)."""
    info = job_info()
    plausibility.emit(schema.check_config(cfg))  # the whole config, before anything is built or loaded
    schema.check_method(info["choices"])
    run_dir = Path(info["run_dir"])
    done = identity.reusable(run_dir, cfg, info["choices"].get("method"), info["group"] is not None)
    if done is not None:
        print_results(done)
        return done
    from kaft.train import distributed  # torch is imported only under train.distributed=ddp

    distributed.setup(S.plain(cfg.train), run_dir)  # torchrun's / submitit's ranks: before any stage
    job = Job(cfg, distributed.job_cache(Cache(cfg.cache_dir), run_dir))  # ranks > 0 read what rank 0 builds
    try:
        results = _execute(job, info, run_dir)
    except KeyboardInterrupt:
        raise interrupt.record(run_dir, job, info) from None
    except Exception as e:  # rank 0 of several: the followers waiting for its artifacts stop too
        raise distributed.failed(run_dir, e)  # noqa: B904 - e itself, re-raised
    distributed.finish()
    return results


def _execute(job: Job, info: dict, run_dir: Path) -> dict:
    """The recipe: data -> detect -> partition -> select -> train -> evaluate -> diagnose -> track."""
    _data(job)
    _detect(job)
    _partition(job)
    sel = _select(job)
    base = _evaluate_base(job, sel, run_dir)  # before training: the LoRA adapter wraps the base model in place
    trained = _train(job, sel)
    metrics = _evaluate(job, trained, base, run_dir)
    fine = _fine_grained(job, metrics, base)
    diagnosis = _diagnose_training(job, sel, trained)
    detection = _diagnose(job)
    results = _results(job, info, sel, metrics, base, fine, detection)
    if diagnosis is not None:  # only with diagnosis.enabled=true: a default job's results.json is as before
        results["diagnosis"] = diagnosis
    if writes_outputs():
        _track(job, info, results, run_dir)  # one rank writes results.json and the logger's run
    print_results(results)
    return results


def writes_outputs() -> bool:
    """Whether this process writes results.json and the logger's run: the only process, or rank 0 of several."""
    from kaft.train.distributed import is_main

    return is_main()


def finished(run_dir: Path) -> dict | None:
    """The saved results of a job that already completed in ``run_dir`` (a resubmitted job skips itself)."""
    try:
        saved = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("status") == "done" and saved.get("metrics") else None


def _acc(x: float | None) -> str:
    return f"{x if x is not None else float('nan'):>8.4f}"


def _metric_kind(r: dict) -> str:
    """A benchmark row's metric: log-likelihood accuracy, or a generative one judged by its verifier (lm-eval's
    exact_match beside it; responses without a verdict, as an LLM judge's unparseable output, counted)."""
    if r.get("metric") != "generative":
        return "loglik acc"
    em = "n/a" if r.get("exact_match") is None else f"{r['exact_match']:.4f}"
    dropped = f", {r['no_verdict']} without verdict" if r.get("no_verdict") else ""
    return f"generative, verifier {r.get('verifier')} (exact_match {em}{dropped})"


def _diagnosis_line(block: dict | None) -> str | None:
    from kaft.diagnosis.stage import headline  # lazy: read only when a job ran the diagnosis

    return headline(block) if block else None


def print_results(results: dict) -> None:
    m, b = results["metrics"], results.get("base_metrics")
    gen = any(r.get("metric") == "generative" for r in m["benchmarks"].values())
    lines = [f"{'benchmark':<20} {'base':>8} {'tuned':>8}" + ("  metric" if gen else "")]
    for name, r in m["benchmarks"].items():
        base = b["benchmarks"][name]["acc"] if b else None
        lines.append(f"{name:<20} {_acc(base)} {_acc(r['acc'])}" + (f"  {_metric_kind(r)}" if gen else ""))
    lines.append(f"{'average':<20} {_acc(b['average'] if b else None)} {_acc(m['average'])}")
    det = results["detection"]
    print("\n".join(lines))
    print(f"subsets {results['subsets']}  score mean={det['mean']:.3f}{diagnostics.headlines(det)}")
    if (line := _diagnosis_line(results.get("diagnosis"))) is not None:
        print(line)
    tt = results.get("train_target")
    if tt and tt.get("mean_label_tokens") is not None:
        print(f"trained on train.target={tt['kind']} ({tt['mean_label_tokens']:.1f} label tokens per example)")
    print(f"cache {results['cache']}  timings {results['timings']}")
    print(f"results: {Path(results['job']['run_dir']) / RESULTS_FILE}")
