"""``python -m kaft.run`` — the main job: data → detect → partition → train → evaluate → track.

Data flows one way through :func:`run`. Each stage's artifact is fetched from (or written to) the content-addressed
cache under a key of everything that affects it, so the jobs of a sweep share detection, base evaluation and any
identical training run. Every config and data check happens before a model is loaded.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from kaft import data as data_mod
from kaft import eval_tasks
from kaft import detect as detect_mod
from kaft import modeling
from kaft import partition as partition_mod
from kaft import strategy as strategy_mod
from kaft.cache import Cache, atomic_write_json, make_key
from kaft.testbed.world import WorldConfigError

log = logging.getLogger("kaft")

# bumped when a stage's code changes in a way that changes its artifact
STAGE_VERSIONS = {"data": 1, "detect": 2, "partition": 1, "train": 1, "evaluate": 1}


class ConfigError(ValueError):
    """An impossible combination of settings."""


USER_ERRORS = (ConfigError, data_mod.DataError, modeling.ModelError, detect_mod.DetectionError,
               partition_mod.PartitionError, strategy_mod.StrategyError, WorldConfigError)


# ----------------------------------------------------------------------------------------------- helpers
@dataclass
class Timer:
    seconds: dict = field(default_factory=dict)

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.time()
        log.info("── %s", stage)
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.time() - t0, 3)


class LazyModel:
    """Loads the base model only when a stage actually needs it (a fully cached re-run never does)."""

    def __init__(self, cfg: Mapping, path: str, device: str | None):
        self.cfg, self.path, self.device = cfg, path, device
        self._pair = None

    def get(self):
        if self._pair is None:
            self._pair = modeling.load(self.cfg, self.path, self.device)
        return self._pair

    @property
    def loaded(self) -> bool:
        return self._pair is not None


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def auroc(pos_scores: list[float], neg_scores: list[float]) -> float:
    """P(score of a random negative > score of a random positive) with ties counted half: how well a LOW score
    flags the positives (e.g. contradicting items)."""
    if not pos_scores or not neg_scores:
        return float("nan")
    wins = sum((n > p) + 0.5 * (n == p) for p in pos_scores for n in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))


def score_stats(records: list[dict], items: list[data_mod.MCItem], subsets: list[int], names: list[str]) -> dict:
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
    kinds = sorted({it.meta.get("kind") for it in items if it.meta.get("kind")})
    if kinds:  # data sets that know the truth (the testbed) also report how well detection finds it
        out["mean_by_kind"] = {k: statistics.fmean([s for s, it in zip(scores, items) if it.meta.get("kind") == k])
                               for k in kinds}
        if "contradict" in kinds:
            pos = [s for s, it in zip(scores, items) if it.meta.get("kind") == "contradict"]
            neg = [s for s, it in zip(scores, items) if it.meta.get("kind") != "contradict"]
            out["auroc_contradict"] = auroc(pos, neg)
            out["contradict_in_lowest_subset"] = (
                sum(1 for it, g in zip(items, subsets) if it.meta.get("kind") == "contradict" and g == 0)
                / max(1, len(pos)))
    return out


# ----------------------------------------------------------------------------------------------- stages
def stage_data(cfg: DictConfig, cache: Cache) -> tuple[list, dict, dict]:
    """Load + validate the training set and every benchmark; returns (train, {name: items}, fingerprints).

    A ``format: freeform`` training set (question + reference answer) loads as free-form items; detection
    (``mc_conversion``) turns them into multiple choice."""
    ds = cfg.dataset
    ctx = {"testbed": _plain(cfg.testbed), "cache_dir": cfg.cache_dir}
    if not ds.get("eval"):
        raise ConfigError(f"dataset {ds.name!r} has no eval benchmarks (dataset.eval is empty)")
    freeform = ds.train.get("format", "mc") == "freeform"
    if freeform != (cfg.detection.name == "mc_conversion"):
        raise ConfigError("free-form training data (dataset.train.format: freeform) needs detection=mc_conversion, "
                          "and detection=mc_conversion needs free-form training data" if freeform else
                          "detection=mc_conversion needs free-form training data (dataset.train.format: freeform, "
                          "e.g. dataset=testbed_freeform)")
    for spec in [ds.train, *ds.eval.values()]:
        data_mod.check_spec({k: v for k, v in _plain(spec).items() if k != "format"})
    train = load_train(cfg)
    evals = {}
    for name, spec in ds.eval.items():
        evals[name] = eval_tasks.load_benchmark(_plain(spec), domain=spec.get("domain", ds.domain), **ctx)
    fps = {"train": data_mod.fingerprint(train), **{n: data_mod.fingerprint(v) for n, v in evals.items()}}
    return train, evals, fps


def load_train(cfg: DictConfig) -> list:
    """The training set as the data stage loads it (free-form items for ``format: freeform``); kaft.export reloads
    it with a finished job's config, because detection's records hold scores, not questions."""
    from kaft import convert

    ds, ctx = cfg.dataset, {"testbed": _plain(cfg.testbed), "cache_dir": cfg.cache_dir}
    if ds.train.get("format", "mc") == "freeform":
        return convert.load_freeform(_plain(ds.train), domain=ds.domain, **ctx)
    return data_mod.load_items(_plain(ds.train), domain=ds.domain, **ctx)


def validate(cfg: DictConfig, n_train: int) -> None:
    """Config checks that need only the data size: run before the model loads."""
    from kaft import losses

    detect_mod.validate(_plain(cfg.detection))
    if int(cfg.detection.shots) + 1 > n_train:
        raise ConfigError(f"detection.shots={cfg.detection.shots} needs at least {cfg.detection.shots + 1} "
                          f"training items, the data set has {n_train}")
    partition_mod.validate(int(cfg.partition.k), n_train)
    strategy_mod.validate(_plain(cfg.strategy), int(cfg.partition.k))
    needs = [what for what, yes in (("strategy=" + cfg.strategy.name, strategy_mod.needs_samples(_plain(cfg.strategy))),
                                    ("loss=" + cfg.loss.name, losses.needs_samples(
                                        _plain(cfg.loss)))) if yes]
    if needs and not detect_mod.saves_samples(_plain(cfg.detection)):
        raise ConfigError(f"{' and '.join(needs)} needs the model's sampled answers, but detection "
                          f"(estimator={cfg.detection.get('estimator', 'sample')}) saves none; "
                          f"use detection.estimator=sample or detection=icl")
    try:
        losses.validate_loss_cfg(_plain(cfg.loss), int(cfg.partition.k))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key in ("batch_size", "epochs"):
        if not float(cfg.train[key]) > 0:
            raise ConfigError(f"train.{key} must be > 0, got {cfg.train[key]}")
    if not float(cfg.train.lr) > 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.train.lr}")


def stage_detect(cfg, cache, model, train, model_id, fps, which: str = "train",
                 det: Mapping | None = None) -> tuple[list[dict], bool, str]:
    """Probe ``train`` (or, for fine-grained evaluation, the benchmark ``which``) with ``det`` (default
    ``cfg.detection``); cached per data fingerprint and detection settings."""
    det = _plain(cfg.detection) if det is None else dict(det)
    key = make_key("detect", STAGE_VERSIONS["detect"], model_id, fps[which], detect_mod.settings(det),
                   cfg.seed, cfg.dataset.domain, cfg.dataset.get("instruction"))

    def build(tmp: Path):
        backend = detect_mod.make_backend(det, model.get, model.path, int(cfg.seed))
        try:
            records = detect_mod.run_detection(backend, train, det, int(cfg.seed),
                                               cfg.dataset.domain, cfg.dataset.get("instruction"),
                                               progress=bool(cfg.progress), work_dir=cache.scratch("detect", key))
        finally:
            getattr(backend, "close", lambda: None)()  # a vLLM engine frees its process and KV cache
        detect_mod.write_records(records, tmp / "scores.jsonl")

    hit = cache.get_or_create("detect", key, build, meta={"n_items": len(train)})
    log.info("detection %s (%s)", "reused from cache" if hit.cached else "computed", hit.path)
    return detect_mod.read_records(hit.path / "scores.jsonl"), hit.cached, key


def stage_greedy(cfg, cache, model, train, model_id, records) -> tuple[list[dict], bool | None]:
    """Each record with ``greedy``: the model's greedy answer to the original-order query (KaFT §2.2's r_i, what
    ``strategy.answer_source=greedy`` trains on). Records that hold it already (ICL, the exact estimator) are
    returned as they are; otherwise one exact forward pass per item over the original order only, with the
    detection's prompt and shots (its own cached detect artifact): the argmax of the option letters' probabilities."""
    if all(strategy_mod.greedy_answer(r) is not None for r in records):
        return records, None
    det = {**detect_mod.settings(_plain(cfg.detection)), "name": "diversified", "estimator": "exact",
           "diverse_query": False, "response_sampling": True}
    det = {k: v for k, v in det.items() if k not in detect_mod.CONVERSION_KEYS}
    probe, hit, _ = stage_detect(cfg, cache, model, train, model_id, {"greedy": data_mod.fingerprint(train)},
                                 which="greedy", det=det)
    return [{**r, "greedy": strategy_mod.greedy_answer(g)} for r, g in zip(records, probe)], hit


def stage_dpo_samples(cfg, cache, model, items, model_id, sampling: Mapping) -> tuple[list[dict], bool]:
    """SMA's diversity sampling for ``loss=dpo pair_source=sma``: ``num_samples`` responses per training item (after
    the strategy: answers as trained) to its training prompt; cached per model, items and sampling settings."""
    from kaft.pairs import sample_responses

    key = make_key("dpo_samples", 1, model_id, data_mod.fingerprint(items), sampling, cfg.seed, cfg.dataset.domain,
                   cfg.dataset.get("instruction"))

    def build(tmp: Path):  # zero-shot prompts share no demonstrations: batch them without prefix grouping
        backend = detect_mod.make_backend({**_plain(cfg.detection), "share_prefix": False}, model.get, model.path,
                                          int(cfg.seed))
        try:
            recs = sample_responses(backend, items, sampling, int(cfg.seed), cfg.dataset.domain,
                                    cfg.dataset.get("instruction"))
        finally:
            getattr(backend, "close", lambda: None)()
        detect_mod.write_records(recs, tmp / "samples.jsonl")

    hit = cache.get_or_create("dpo_samples", key, build, meta={"n_items": len(items)})
    return detect_mod.read_records(hit.path / "samples.jsonl"), hit.cached


def partition_key(detect_key: str, k: int, seed: Any) -> str:
    return make_key("partition", STAGE_VERSIONS["partition"], detect_key, k, seed)


def stage_partition(cfg, cache, records, detect_key) -> tuple[list[int], list[str]]:
    k = int(cfg.partition.k)
    key = partition_key(detect_key, k, cfg.seed)

    def build(tmp: Path):
        subsets = partition_mod.partition([r["id"] for r in records], [r["score"] for r in records], k, int(cfg.seed))
        atomic_write_json(tmp / "partition.json", {"k": k, "names": partition_mod.subset_names(k),
                                                   "ids": [r["id"] for r in records], "subsets": subsets})

    hit = cache.get_or_create("partition", key, build)
    import json

    saved = json.loads((hit.path / "partition.json").read_text())
    return saved["subsets"], saved["names"]


def stage_train(cfg, cache, model, train, weights, model_id, records=None):
    """Returns (tuned model in memory or None if only cached, adapter dir, cache hit?, key)."""
    # preference losses train on the detection samples: those are part of what the adapter depends on
    samples = [(r["id"], r.get("answers")) for r in records] if records is not None else None
    from kaft.train import CHECKPOINT_KEYS  # how often progress is saved does not change the adapter

    train_cfg = {k: v for k, v in _plain(cfg.train).items() if k not in CHECKPOINT_KEYS}
    key = make_key("train", STAGE_VERSIONS["train"], model_id, data_mod.fingerprint(train), [round(w, 8) for w in weights],
                   samples,
                   _plain(cfg.loss), train_cfg, cfg.seed, cfg.dataset.domain, cfg.dataset.get("instruction"))
    tuned = {}

    def build(tmp: Path):
        from kaft.train import train_lora

        m, tok = model.get()
        extra = {"records": records} if records is not None else {}
        tuned["model"] = train_lora(m, tok, train, weights, _plain(cfg.loss), _plain(cfg.train), tmp, int(cfg.seed),
                                    cfg.dataset.domain, cfg.dataset.get("instruction"),
                                    checkpoint_dir=cache.scratch("train", key), **extra)

    hit = cache.get_or_create("train", key, build, meta={"n_items": len(train)})
    return tuned.get("model"), hit.path, hit.cached, key


def stage_evaluate(cfg, cache, get_model, evals, tag_key, fps, run_dir: Path) -> tuple[dict, bool]:
    from kaft.evaluate import evaluate

    ev = {k: v for k, v in _plain(cfg.evaluation).items() if k not in ("base", "fine_grained")}
    per_item = bool(cfg.evaluation.get("fine_grained", False))
    if per_item:
        ev["per_item"] = True
    key = make_key("evaluate", STAGE_VERSIONS["evaluate"], tag_key, {n: fps[n] for n in evals}, ev,
                   cfg.dataset.domain, cfg.dataset.get("instruction"))

    def build(tmp: Path):
        m, tok = get_model()
        metrics = evaluate(m, tok, evals, work_dir=tmp / "tasks", domain=cfg.dataset.domain,
                           instruction=cfg.dataset.get("instruction"), batch_size=int(cfg.evaluation.batch_size),
                           limit=cfg.evaluation.get("limit"), per_item=per_item)
        atomic_write_json(tmp / "metrics.json", metrics)

    hit = cache.get_or_create("evaluate", key, build)
    import json

    return json.loads((hit.path / "metrics.json").read_text()), hit.cached


def fine_grained(cfg, cache, model, model_id, evals, fps, metrics, base_metrics, k, names, status) -> dict:
    """KaFT Table 1: probe each benchmark with the same detection, split it into the same K conflict subsets and
    report base and tuned accuracy per subset (needs ``evaluation.fine_grained=true``: per-item predictions)."""
    out = {}
    for name, items in evals.items():
        recs, status[f"detect_{name}"], key = stage_detect(cfg, cache, model, items, model_id, fps, which=name)
        subsets, _ = stage_partition(cfg, cache, recs, key)
        ids = [r["id"] for r in recs]
        out[name] = {tag: strategy_mod.accuracy_by_subset(m["benchmarks"][name]["items"], ids, subsets, names)
                     for tag, m in (("base", base_metrics), ("tuned", metrics)) if m}
    return out


def _drop_items(metrics: dict | None) -> dict | None:
    """Metrics without the per-item rows (kept in the cache, too long for results.json and W&B)."""
    if not metrics:
        return metrics
    return {**metrics, "benchmarks": {n: {k: v for k, v in b.items() if k != "items"}
                                      for n, b in metrics["benchmarks"].items()}}


# ----------------------------------------------------------------------------------------------- the job
def _job_info() -> dict:
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


def run(cfg: DictConfig) -> dict:
    """Execute one job and return its results (also written to results.json in the run directory)."""
    from kaft import losses, track

    job = _job_info()
    run_dir = Path(job["run_dir"])
    done = _finished(run_dir)
    if done is not None and not cfg.get("force", False):
        log.info("already complete: %s (force=true re-runs it)", run_dir / "results.json")
        _print_results(done)
        return done
    cache = Cache(cfg.cache_dir)
    timer = Timer()
    status = {}

    with timer("data"):
        train, evals, fps = stage_data(cfg, cache)
        validate(cfg, len(train))
    log.info("data: %d training items, benchmarks %s", len(train), {n: len(v) for n, v in evals.items()})

    with timer("model"):
        path, model_id = modeling.resolve(_plain(cfg.model), _plain(cfg.testbed), cfg.cache_dir)
        model = LazyModel(_plain(cfg.model), path, cfg.device)

    with timer("detect"):
        records, status["detect"], detect_key = stage_detect(cfg, cache, model, train, model_id, fps)
    if records and "item" in records[0]:  # mc_conversion: train on the multiple-choice versions
        train = [data_mod.MCItem.from_dict(r["item"]) for r in records]

    with timer("partition"):
        subsets, names = stage_partition(cfg, cache, records, detect_key)
    k = int(cfg.partition.k)
    sizes = partition_mod.subset_sizes(subsets, k)
    log.info("partition: %s", sizes)

    if strategy_mod.needs_greedy(_plain(cfg.strategy)):
        with timer("greedy"):
            records, greedy_hit = stage_greedy(cfg, cache, model, train, model_id, records)
        if greedy_hit is not None:
            status["greedy"] = greedy_hit
    weights = losses.sample_weights(_plain(cfg.loss), subsets, [r["score"] for r in records], k)
    sel = strategy_mod.select(_plain(cfg.strategy), train, records, subsets, names, weights, int(cfg.seed))
    log.info("strategy %s: training on %d of %d items", cfg.strategy.name, len(sel.items), len(train))

    base_metrics = None
    if cfg.evaluation.get("base", True) or not sel.train:
        with timer("evaluate_base"):
            base_metrics, status["evaluate_base"] = stage_evaluate(
                cfg, cache, model.get, evals, ("base", model_id), fps, run_dir)

    train_key = None
    if sel.train:
        with timer("train"):
            pair_records = sel.records if losses.is_pairwise(_plain(cfg.loss)) else None
            sampling = losses.sma_sampling(_plain(cfg.loss))
            if sampling is not None:  # DPO as SMA builds it: its own samples, not detection's
                pair_records, status["dpo_samples"] = stage_dpo_samples(cfg, cache, model, sel.items, model_id,
                                                                        sampling)
            tuned, adapter_dir, status["train"], train_key = stage_train(
                cfg, cache, model, sel.items, sel.weights, model_id, pair_records)

        def tuned_model():
            nonlocal tuned
            if tuned is None:
                from peft import PeftModel

                m, tok = model.get()
                tuned = PeftModel.from_pretrained(m, str(adapter_dir))
                tuned.eval()
            return tuned, model.get()[1]

        with timer("evaluate"):
            metrics, status["evaluate"] = stage_evaluate(cfg, cache, tuned_model, evals, ("tuned", train_key), fps,
                                                         run_dir)
    else:  # strategy=none: the base model is the result
        metrics = base_metrics

    fine = None
    if cfg.evaluation.get("fine_grained", False):
        with timer("fine_grained"):
            fine = fine_grained(cfg, cache, model, model_id, evals, fps, metrics, base_metrics, k, names, status)

    results = {
        "status": "done",
        "job": {k: job[k] for k in ("name", "override_dirname", "num", "run_dir")},
        "overrides": job["overrides"],
        "data": {"n_train": len(train), "n_eval": {n: len(v) for n, v in evals.items()}, "fingerprints": fps},
        "metrics": _drop_items(metrics),
        "base_metrics": _drop_items(base_metrics),
        "delta_vs_base": (metrics["average"] - base_metrics["average"]) if base_metrics else None,
        "fine_grained": fine,
        "strategy": sel.info,
        "detection": score_stats(records, train, subsets, names),
        "subsets": sizes,
        "weights_by_subset": {names[s]: statistics.fmean([w for w, g in zip(sel.weights, sel.subsets) if g == s])
                              for s in range(k) if s in sel.subsets},
        "cache": {stage: ("hit" if hit else "miss") for stage, hit in status.items()},
        "cache_keys": {"detect": detect_key, "train": train_key, "model": model_id},
        "timings": timer.seconds,
        "versions": track.package_versions(),
        "choices": job["choices"],   # the config group options this job composed (model, dataset, method, ...)
        "config": {**_plain(cfg), "method": job["choices"].get("method")},
    }
    track.write_results(run_dir, results)
    logger = track.make_logger(_plain(cfg.logger), run_dir, job["name"], job["group"], _plain(cfg))
    try:
        logger.log_results(results)
    finally:
        logger.finish()
    _print_results(results)
    return results


def _finished(run_dir: Path) -> dict | None:
    """The saved results of a job that already completed in ``run_dir`` (a resubmitted job skips itself)."""
    import json

    path = run_dir / "results.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("status") == "done" and saved.get("metrics") else None


def _print_results(results: dict) -> None:
    m, b = results["metrics"], results.get("base_metrics")
    lines = [f"{'benchmark':<20} {'base':>8} {'tuned':>8}"]
    for name, r in m["benchmarks"].items():
        base = b["benchmarks"][name]["acc"] if b else float("nan")
        lines.append(f"{name:<20} {base:>8.4f} {r['acc']:>8.4f}")
    lines.append(f"{'average':<20} {(b['average'] if b else float('nan')):>8.4f} {m['average']:>8.4f}")
    det = results["detection"]
    extra = f"  auroc(contradict)={det['auroc_contradict']:.3f}" if "auroc_contradict" in det else ""
    if "contradict_in_lowest_subset" in det:  # recall: the share of the contradictions that the wrong subset holds
        extra += f"  contradict in lowest subset={det['contradict_in_lowest_subset']:.3f}"
    print("\n".join(lines))
    print(f"subsets {results['subsets']}  score mean={det['mean']:.3f}{extra}")
    print(f"cache {results['cache']}  timings {results['timings']}")
    print(f"results: {Path(results['job']['run_dir']) / 'results.json'}")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float:
    """One job. A user error (bad data, impossible config) prints one ``kaft: error: ...`` line. In a single run it
    then exits 2 and any other exception raises. In a multirun every failure is recorded instead — ``error.txt``
    (traceback) and ``results.json`` with ``"status": "failed"`` in the job's run dir — and the job returns NaN, so
    the other jobs go on; the sweep summary lists it as failed and the sweep exits 1 (see kaft/status.py)."""
    from kaft import status as status_mod

    status_mod.job_started()
    multirun = status_mod.in_multirun()
    try:
        status_mod.check_writable_dir(cfg.cache_dir, "cache dir (cache_dir / KAFT_CACHE_DIR)")
        results = run(cfg)
    except USER_ERRORS + status_mod.CONFIG_ERRORS as e:
        msg = status_mod.one_line(e) if isinstance(e, status_mod.CONFIG_ERRORS) else str(e)
        log.error("%s", msg)
        print(f"kaft: error: {msg}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        job = _job_info()
        status_mod.record_failure(job["run_dir"], e, job, cfg)
        return math.nan
    except Exception as e:
        if not multirun:
            raise
        log.exception("job failed: %s", e)
        job = _job_info()
        line = status_mod.record_failure(job["run_dir"], e, job, cfg)
        print(f"kaft: job {job['num']} failed: {line} (traceback in {Path(job['run_dir']) / 'error.txt'})",
              file=sys.stderr)
        return math.nan
    return results["metrics"]["average"]


def _resolve_cfg_job(argv: list[str]) -> list[str]:
    """``--cfg job`` prints the job config resolved: the losses' own defaults are interpolations of the top-level
    ``alpha`` / ``beta`` (``eaft_alpha: ${kaft_default:${alpha},1.0}``), and the value a job uses is what to show."""
    for flag in ("--cfg", "-c"):
        at = argv.index(flag) + 1 if flag in argv[:-1] else 0
        if at and argv[at] == "job" and "--resolve" not in argv:
            return [*argv[:at + 1], "--resolve", *argv[at + 1:]]
    return argv


def main() -> None:
    """The CLI (``python -m kaft.run``): Hydra's own errors (unknown config option, a value of the wrong type, bad
    override syntax) also end in one ``kaft: error: ...`` line and exit code 2; a sweep with failed jobs exits 1
    after all its jobs have run."""
    from kaft.status import hydra_errors_as_one_line
    from kaft.summary import LAST_SWEEP

    sys.argv = _resolve_cfg_job(sys.argv)
    with hydra_errors_as_one_line():
        _main()
    if LAST_SWEEP["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
