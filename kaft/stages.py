"""The stages of a job (kaft.job runs them in order): data, detection, partition, training, evaluation.

Each stage's artifact is fetched from (or written to) the content-addressed cache under a key of everything that
affects it, so the jobs of a sweep share detection, base evaluation and any identical training run. Every config and
data check (:func:`validate`) runs before a model is loaded.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from kaft import data as data_mod
from kaft import detection as detect_mod
from kaft import eval_tasks
from kaft import modeling
from kaft import partition as partition_mod
from kaft import strategy as strategy_mod
from kaft.cache import Cache, atomic_write_json, make_key
from kaft.errors import ConfigError

log = logging.getLogger("kaft")

# bumped when a stage's code changes in a way that changes its artifact
STAGE_VERSIONS = {"data": 1, "detect": 2, "partition": 1, "train": 1, "evaluate": 1}


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


def plain(cfg: Any) -> Any:
    """A config node as plain Python containers, interpolations resolved (what cache keys and sources see)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def source_context(cfg: DictConfig) -> dict:
    """What every data and model source receives besides its own config: the cache and the whole job config (a
    plugin source, such as the testbed's, reads its own section from it)."""
    return {"cache_dir": cfg.cache_dir, "config": plain(cfg)}


def stage_model(cfg: DictConfig) -> tuple[LazyModel, str]:
    """The base model and its identity: resolved (a plugin source may build it on first use), loaded only when a
    stage needs it."""
    path, model_id = modeling.resolve(plain(cfg.model), cfg.cache_dir, plain(cfg))
    return LazyModel(plain(cfg.model), path, cfg.device), model_id


def stage_data(cfg: DictConfig, cache: Cache) -> tuple[list, dict, dict]:
    """Load + validate the training set and every benchmark; returns (train, {name: items}, fingerprints).

    A ``format: freeform`` training set (question + reference answer) loads as free-form items; detection
    (``mc_conversion``) turns them into multiple choice."""
    ds = cfg.dataset
    ctx = source_context(cfg)
    if not ds.get("eval"):
        raise ConfigError(f"dataset {ds.name!r} has no eval benchmarks (dataset.eval is empty)")
    freeform = ds.train.get("format", "mc") == "freeform"
    if freeform != (cfg.detection.name == "mc_conversion"):
        raise ConfigError("free-form training data (dataset.train.format: freeform) needs detection=mc_conversion, "
                          "and detection=mc_conversion needs free-form training data" if freeform else
                          "detection=mc_conversion needs free-form training data (dataset.train.format: freeform, "
                          "e.g. dataset=testbed_freeform)")
    for spec in [ds.train, *ds.eval.values()]:
        data_mod.check_spec({k: v for k, v in plain(spec).items() if k != "format"})
    train = load_train(cfg)
    evals = {}
    for name, spec in ds.eval.items():
        evals[name] = eval_tasks.load_benchmark(plain(spec), domain=spec.get("domain", ds.domain), **ctx)
    fps = {"train": data_mod.fingerprint(train), **{n: data_mod.fingerprint(v) for n, v in evals.items()}}
    return train, evals, fps


def load_train(cfg: DictConfig) -> list:
    """The training set as the data stage loads it (free-form items for ``format: freeform``); kaft.export reloads
    it with a finished job's config, because detection's records hold scores, not questions."""
    from kaft.detection import convert

    ds, ctx = cfg.dataset, source_context(cfg)
    if ds.train.get("format", "mc") == "freeform":
        return convert.load_freeform(plain(ds.train), domain=ds.domain, **ctx)
    return data_mod.load_items(plain(ds.train), domain=ds.domain, **ctx)


def validate(cfg: DictConfig, n_train: int) -> None:
    """The whole config (:func:`kaft.schema.check_config`) and the checks that need the data size: run before the
    model loads."""
    from kaft.schema import check_config

    check_config(cfg)
    if int(cfg.detection.shots) + 1 > n_train:
        raise ConfigError(f"detection.shots={cfg.detection.shots} needs at least {cfg.detection.shots + 1} "
                          f"training items, the data set has {n_train}")
    partition_mod.validate(int(cfg.partition.k), n_train)


def stage_detect(cfg, cache, model, train, model_id, fps, which: str = "train",
                 det: Mapping | None = None) -> tuple[list[dict], bool, str]:
    """Probe ``train`` (or, for fine-grained evaluation, the benchmark ``which``) with ``det`` (default
    ``cfg.detection``); cached per data fingerprint and detection settings."""
    det = plain(cfg.detection) if det is None else dict(det)
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
    det = detect_mod.greedy_probe(plain(cfg.detection))
    probe, hit, _ = stage_detect(cfg, cache, model, train, model_id, {"greedy": data_mod.fingerprint(train)},
                                 which="greedy", det=det)
    return [{**r, "greedy": strategy_mod.greedy_answer(g)} for r, g in zip(records, probe)], hit


def stage_dpo_samples(cfg, cache, model, items, model_id, sampling: Mapping) -> tuple[list[dict], bool]:
    """SMA's diversity sampling for ``loss=dpo pair_source=sma``: ``num_samples`` responses per training item (after
    the strategy: answers as trained) to its training prompt; cached per model, items and sampling settings."""
    from kaft.detection import sample_responses

    key = make_key("dpo_samples", 1, model_id, data_mod.fingerprint(items), sampling, cfg.seed, cfg.dataset.domain,
                   cfg.dataset.get("instruction"))

    def build(tmp: Path):  # zero-shot prompts share no demonstrations: batch them without prefix grouping
        backend = detect_mod.make_backend({**plain(cfg.detection), "share_prefix": False}, model.get, model.path,
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

    train_cfg = {k: v for k, v in plain(cfg.train).items() if k not in CHECKPOINT_KEYS}
    key = make_key("train", STAGE_VERSIONS["train"], model_id, data_mod.fingerprint(train), [round(w, 8) for w in weights],
                   samples,
                   plain(cfg.loss), train_cfg, cfg.seed, cfg.dataset.domain, cfg.dataset.get("instruction"))
    tuned = {}

    def build(tmp: Path):
        from kaft.train import train_lora

        m, tok = model.get()
        extra = {"records": records} if records is not None else {}
        tuned["model"] = train_lora(m, tok, train, weights, plain(cfg.loss), plain(cfg.train), tmp, int(cfg.seed),
                                    cfg.dataset.domain, cfg.dataset.get("instruction"),
                                    checkpoint_dir=cache.scratch("train", key), **extra)

    hit = cache.get_or_create("train", key, build, meta={"n_items": len(train)})
    return tuned.get("model"), hit.path, hit.cached, key


def stage_evaluate(cfg, cache, get_model, evals, tag_key, fps, run_dir: Path) -> tuple[dict, bool]:
    from kaft.evaluate import evaluate

    ev = {k: v for k, v in plain(cfg.evaluation).items() if k not in ("base", "fine_grained")}
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
