"""The stages of a job (kaft.job runs them in order): data, detection, partition, training, evaluation.

Data and model take the config; every later stage takes a :class:`StageContext` (config, cache, model and its
identity, fingerprints; domain, instruction and seed read from the config) and returns a :class:`StageResult`
(value, cache hit, key).

Each stage's artifact is fetched from (or written to) the content-addressed cache under a key of everything that
affects it, so the jobs of a sweep share detection, base evaluation and any identical training run. Every config and
data check (:func:`validate`) runs before a model is loaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from kaft import data as data_mod
from kaft import detection as detect_mod
from kaft import eval_tasks, modeling, targets
from kaft import partition as partition_mod
from kaft import strategy as strategy_mod
from kaft.cache import Cache, atomic_write_json, make_key
from kaft.defaults import without_new_defaults
from kaft.detection import convert, sample_responses
from kaft.errors import ConfigError
from kaft.evaluate import evaluate
from kaft.evaluate_generative import generation_settings
from kaft.items import is_freeform

# what a job trains on (free-form data, MC conversion's items); kaft.job and kaft.sweep.plan reach them as S.*
from kaft.trainset import (  # noqa: F401
    check_train_format,
    target_kind,
    train_target,
    training_items,
    trains_converted,
)
from kaft.verifiers import make_verifier

log = logging.getLogger("kaft")

FREEFORM_FINE_GRAINED = (
    "a free-form benchmark is scored by generation; KaFT Table 1's subsets come from probing a benchmark with the "
    "job's multiple-choice detection, which free-form items (no options) cannot take, so it has no per-subset accuracy"
)

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

    def release(self) -> None:
        """Forget the loaded model (full fine-tuning trained it in place): the next :meth:`get` loads the base again."""
        self._pair = None

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


class BaseModel(NamedTuple):
    model: LazyModel
    model_id: str  # the model's identity in every cache key


class Data(NamedTuple):
    train: list  # the training items
    evals: dict[str, list]  # benchmark name -> items
    fps: dict[str, str]  # ``train`` and each benchmark -> fingerprint


def stage_model(cfg: DictConfig) -> BaseModel:
    """The base model and its identity: resolved (a plugin source may build it on first use), loaded only when a
    stage needs it."""
    path, model_id = modeling.resolve(plain(cfg.model), cfg.cache_dir, plain(cfg))
    return BaseModel(LazyModel(plain(cfg.model), path, cfg.device), model_id)


def stage_data(cfg: DictConfig, cache: Cache) -> Data:
    """Load + validate the training set and every benchmark (a :class:`Data`).

    A ``format: freeform`` training set (question + reference answer) loads as free-form items; detection
    (``mc_conversion``) turns them into multiple choice."""
    ds = cfg.dataset
    ctx = source_context(cfg)
    if not ds.get("eval"):
        raise ConfigError(f"dataset {ds.name!r} has no eval benchmarks (dataset.eval is empty)")
    check_train_format(cfg)
    for spec in [ds.train, *ds.eval.values()]:
        data_mod.check_spec({k: v for k, v in plain(spec).items() if k != "format"})
    train = load_train(cfg)
    evals = {}
    for name, spec in ds.eval.items():
        evals[name] = eval_tasks.load_benchmark(plain(spec), domain=spec.get("domain", ds.domain), **ctx)
    fps = {"train": data_mod.fingerprint(train), **{n: data_mod.fingerprint(v) for n, v in evals.items()}}
    return Data(train, evals, fps)


def load_train(cfg: DictConfig) -> list:
    """The training set as the data stage loads it (free-form items for ``format: freeform``); kaft.export reloads
    it with a finished job's config, because detection's records hold scores, not questions."""
    ds, ctx = cfg.dataset, source_context(cfg)
    if ds.train.get("format", "mc") == "freeform":
        return convert.load_freeform(plain(ds.train), domain=ds.domain, **ctx)
    return data_mod.load_items(plain(ds.train), domain=ds.domain, **ctx)


def validate(cfg: DictConfig, n_train: int) -> None:
    """The checks that need the data size, run before the model loads. The rest of the config was checked already
    (:func:`kaft.schema.check_config`: first thing in :func:`kaft.job.run`, and in the sweep plan's preflight)."""
    if int(cfg.detection.shots) + 1 > n_train:
        raise ConfigError(
            f"detection.shots={cfg.detection.shots} needs at least {cfg.detection.shots + 1} "
            f"training items, the data set has {n_train}"
        )
    partition_mod.validate(int(cfg.partition.k), n_train)


@dataclass(frozen=True)
class StageContext:
    """What every stage after data and model reads: the job's config and cache, the base model and its identity, the
    data fingerprints, and the prompt settings and seed that enter every key (read here, not passed by hand).

    The sweep plan (:mod:`kaft.sweep.plan`) builds one with a dry cache and no model to find the same keys."""

    cfg: DictConfig
    cache: Any  # a kaft.cache.Cache (or the plan's dry cache)
    model: Any  # a LazyModel (or the plan's stand-in that loads nothing)
    model_id: str
    fps: Mapping[str, str]  # data set name (``train`` and each benchmark) -> fingerprint

    @property
    def domain(self) -> str:
        return self.cfg.dataset.domain

    @property
    def instruction(self) -> str | None:
        return self.cfg.dataset.get("instruction")

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    def plain(self, section: str) -> Any:
        """One config section as plain containers (what keys and components see)."""
        return plain(self.cfg[section])


@dataclass(frozen=True)
class StageResult:
    """What a cached stage returns: its ``value``, whether it came from the cache (None: the stage had nothing to
    compute), and its cache key."""

    value: Any
    cache_hit: bool | None
    key: str | None


class Partition(NamedTuple):
    subsets: list[int]  # per record, its conflict subset
    names: list[str]  # subset index -> name


class Trained(NamedTuple):
    model: Any  # the tuned peft (or fully fine-tuned) model in memory, or None when it came from the cache
    adapter_dir: Path  # the adapter, or under train.finetune=full the saved model and its tokenizer


def stage_detect(ctx: StageContext, items: list, which: str = "train", det: Mapping | None = None) -> StageResult:
    """Probe ``items`` (the training set, or for fine-grained evaluation the benchmark ``which``) with ``det``
    (default ``cfg.detection``); cached per data fingerprint and detection settings. Value: the records."""
    det = ctx.plain("detection") if det is None else dict(det)
    # the verifier enters the key only of a detection that reads it (generative): every other key is as before
    judged = [plain(ctx.cfg.get("verifier")) or {"name": "exact"}] if detect_mod.reads_verifier(det) else []
    key = make_key(
        "detect",
        STAGE_VERSIONS["detect"],
        ctx.model_id,
        ctx.fps[which],
        detect_mod.settings(det),
        ctx.seed,
        ctx.domain,
        ctx.instruction,
        *judged,
    )

    def build(tmp: Path):
        # an LLM judge without a model of its own judges with the job's (loaded once, shared with the backend)
        verifier = make_verifier(judged[0], ctx.model.get) if judged else None
        backend = detect_mod.make_backend(det, ctx.model.get, ctx.model.path, ctx.seed)
        try:
            records = detect_mod.run_detection(
                backend,
                items,
                det,
                ctx.seed,
                ctx.domain,
                ctx.instruction,
                progress=bool(ctx.cfg.progress),
                work_dir=ctx.cache.scratch("detect", key),
                verifier=verifier,
            )
        finally:
            getattr(backend, "close", lambda: None)()  # a vLLM engine frees its process and KV cache
        detect_mod.write_records(records, tmp / "scores.jsonl")

    hit = ctx.cache.get_or_create("detect", key, build, meta={"n_items": len(items)})
    log.info("detection %s (%s)", "reused from cache" if hit.cached else "computed", hit.path)
    return StageResult(detect_mod.read_records(hit.path / "scores.jsonl"), hit.cached, key)


def stage_greedy(ctx: StageContext, items: list, records: list[dict]) -> StageResult:
    """Each record with ``greedy``: the model's greedy answer to the original-order query (KaFT §2.2's r_i, what
    ``strategy.answer_source=greedy`` trains on). Records that hold it already (ICL, the exact estimator) are
    returned as they are (``cache_hit`` None); otherwise one exact forward pass per item over the original order
    only, with the detection's prompt and shots (its own cached detect artifact): the argmax of the option letters'
    probabilities."""
    if all(strategy_mod.greedy_answer(r) is not None for r in records):
        return StageResult(records, None, None)
    det = detect_mod.greedy_probe(ctx.plain("detection"))
    probe_ctx = replace(ctx, fps={"greedy": data_mod.fingerprint(items)})
    probe = stage_detect(probe_ctx, items, which="greedy", det=det)
    return StageResult(
        [{**r, "greedy": strategy_mod.greedy_answer(g)} for r, g in zip(records, probe.value)],
        probe.cache_hit,
        probe.key,
    )


def stage_dpo_samples(ctx: StageContext, items: list, sampling: Mapping) -> StageResult:
    """SMA's diversity sampling for ``loss=dpo pair_source=sma`` (and ``sft_self``): ``num_samples`` responses per
    training item (after the strategy: answers as trained) to its training prompt; free-form items' responses judged
    by the job's verifier (:func:`kaft.losses.response_pairs.sample_and_judge`). Cached per model, items, sampling
    settings (and verifier)."""
    freeform = is_freeform(items)
    verifier = plain(ctx.cfg.get("verifier")) or {"name": "exact"}
    key = make_key(
        "dpo_samples",
        1,
        ctx.model_id,
        data_mod.fingerprint(items),
        sampling,
        ctx.seed,
        ctx.domain,
        ctx.instruction,
        *([{"verifier": verifier}] if freeform else []),  # multiple-choice samples keep the key they had
    )

    def build(tmp: Path):  # zero-shot prompts share no demonstrations: batch them without prefix grouping
        backend = detect_mod.make_backend(
            {**ctx.plain("detection"), "share_prefix": False}, ctx.model.get, ctx.model.path, ctx.seed
        )
        try:
            if freeform:
                from kaft.losses.response_pairs import sample_and_judge

                judge = make_verifier(verifier, ctx.model.get)  # an LLM judge's default model: the job's own
                recs = sample_and_judge(backend, items, sampling, ctx.seed, judge, ctx.domain, ctx.instruction)
            else:
                recs = sample_responses(backend, items, sampling, ctx.seed, ctx.domain, ctx.instruction)
        finally:
            getattr(backend, "close", lambda: None)()
        detect_mod.write_records(recs, tmp / "samples.jsonl")

    hit = ctx.cache.get_or_create("dpo_samples", key, build, meta={"n_items": len(items)})
    return StageResult(detect_mod.read_records(hit.path / "samples.jsonl"), hit.cached, key)


def partition_key(detect_key: str, k: int, seed: Any) -> str:
    return make_key("partition", STAGE_VERSIONS["partition"], detect_key, k, seed)


def stage_partition(ctx: StageContext, records: list[dict], detect_key: str) -> StageResult:
    """The K conflict subsets of the detection ``detect_key``'s records. Value: a :class:`Partition`."""
    k = int(ctx.cfg.partition.k)
    key = partition_key(detect_key, k, ctx.seed)

    def build(tmp: Path):
        subsets = partition_mod.partition([r["id"] for r in records], [r["score"] for r in records], k, ctx.seed)
        atomic_write_json(
            tmp / "partition.json",
            {"k": k, "names": partition_mod.subset_names(k), "ids": [r["id"] for r in records], "subsets": subsets},
        )

    hit = ctx.cache.get_or_create("partition", key, build)
    saved = json.loads((hit.path / "partition.json").read_text())
    return StageResult(Partition(saved["subsets"], saved["names"]), hit.cached, key)


def stage_train(ctx: StageContext, items: list, weights: list[float], records: list[dict] | None = None) -> StageResult:
    """Fine-tuning (LoRA or ``train=full``) on ``items`` weighted by ``weights`` (``records``: the sampled answers a
    preference loss pairs). Value: a :class:`Trained` (the model in memory only when trained in this process)."""
    from kaft.losses import get_loss, key_config
    from kaft.train import CHECKPOINT_KEYS, TrainSpec, key_settings, train_lora  # lazy: kaft.train imports torch
    from kaft.train.distributed import get_or_create_train, world_size

    # preference losses train on the detection samples: those are part of what the adapter depends on
    samples = [(r["id"], r.get("answers")) for r in records] if records is not None else None
    if records is not None and any("responses" in r for r in records):  # free-form samples and their verdicts
        samples = [(r["id"], r.get("responses"), r.get("verdicts")) for r in records]
    # how often progress is saved does not change the adapter; train.target enters as the kind it resolves to
    train_cfg = {k: v for k, v in ctx.plain("train").items() if k not in (*CHECKPOINT_KEYS, "target")}
    train_cfg = without_new_defaults(train_cfg, "train")  # keys added since, at the default that was the behaviour
    train_cfg = key_settings(train_cfg, get_loss(ctx.plain("loss")).needs, world_size())  # train=full, ddp ranks
    kind = targets.resolve(ctx.cfg.train.get("target"), items)
    key = make_key(
        "train",
        STAGE_VERSIONS["train"],
        ctx.model_id,
        data_mod.fingerprint(items),
        [round(w, 8) for w in weights],
        samples,
        key_config(ctx.plain("loss")),  # a loss key added later enters only when set off its default
        train_cfg,
        ctx.seed,
        ctx.domain,
        ctx.instruction,
        *([] if kind == "letter" else [{"target": kind}]),  # a letter target keeps the key it had before targets
    )
    tuned = {}

    def build(tmp: Path):
        m, tok = ctx.model.get()
        spec = TrainSpec(
            loss=ctx.plain("loss"),
            train=ctx.plain("train"),
            seed=ctx.seed,
            domain=ctx.domain,
            instruction=ctx.instruction,
        )
        tuned["model"] = train_lora(
            m, tok, items, weights, spec, tmp, records=records, checkpoint_dir=ctx.cache.scratch("train", key)
        )

    hit = get_or_create_train(ctx.cache, key, build, {"n_items": len(items)})  # under ddp every rank trains
    return StageResult(Trained(tuned.get("model"), hit.path), hit.cached, key)


def stage_evaluate(
    ctx: StageContext, get_model, evals: Mapping[str, list], tag_key: tuple[str, str], run_dir: Path
) -> StageResult:
    """Accuracy on every benchmark of the model ``get_model()`` returns (called only on a cache miss), cached per
    ``tag_key`` (``("base", model id)`` or ``("tuned", train key)``). Value: the metrics."""
    ev = {k: v for k, v in ctx.plain("evaluation").items() if k not in ("base", "fine_grained", "generation")}
    per_item = bool(ctx.cfg.evaluation.get("fine_grained", False))
    if per_item:
        ev["per_item"] = True
    generative = generative_settings(ctx, evals)
    ev.update(generative)  # only with a free-form benchmark: a multiple-choice evaluation keeps its key
    key = make_key(
        "evaluate", STAGE_VERSIONS["evaluate"], tag_key, {n: ctx.fps[n] for n in evals}, ev, ctx.domain, ctx.instruction
    )

    def build(tmp: Path):
        m, tok = get_model()
        metrics = evaluate(
            m,
            tok,
            evals,
            work_dir=tmp / "tasks",
            domain=ctx.domain,
            instruction=ctx.instruction,
            batch_size=int(ctx.cfg.evaluation.batch_size),
            limit=ctx.cfg.evaluation.get("limit"),
            per_item=per_item,
            **generative,
        )
        atomic_write_json(tmp / "metrics.json", metrics)

    hit = ctx.cache.get_or_create("evaluate", key, build)
    return StageResult(json.loads((hit.path / "metrics.json").read_text()), hit.cached, key)


def generative_settings(ctx: StageContext, evals: Mapping[str, list]) -> dict:
    """``{verifier, generation}`` when a benchmark is free-form (scored by generation and the job's verifier), else
    ``{}``: those settings enter the evaluate key only where they change a number."""
    if not any(is_freeform(items) for items in evals.values()):
        return {}
    return {
        "verifier": plain(ctx.cfg.get("verifier")) or {"name": "exact"},
        "generation": generation_settings(plain(ctx.cfg.evaluation.get("generation"))),
    }


def fine_grained(
    ctx: StageContext, evals: Mapping[str, list], metrics: dict, base_metrics: dict | None, names: list[str]
) -> tuple[dict, dict[str, bool]]:
    """KaFT Table 1: probe each benchmark with the same detection, split it into the same K conflict subsets and
    report base and tuned accuracy per subset (needs ``evaluation.fine_grained=true``: per-item predictions).
    Returns (the table, ``detect_<benchmark>`` -> cache hit)."""
    out, hits = {}, {}
    for name, items in evals.items():
        if is_freeform(items):  # detection here probes multiple choice: a free-form benchmark has no options
            out[name] = {"skipped": FREEFORM_FINE_GRAINED}
            log.warning("fine-grained evaluation: benchmark %r skipped: %s", name, FREEFORM_FINE_GRAINED)
            continue
        det = stage_detect(ctx, items, which=name)
        hits[f"detect_{name}"] = det.cache_hit
        subsets = stage_partition(ctx, det.value, det.key).value.subsets
        ids = [r["id"] for r in det.value]
        out[name] = {
            tag: strategy_mod.accuracy_by_subset(m["benchmarks"][name]["items"], ids, subsets, names)
            for tag, m in (("base", base_metrics), ("tuned", metrics))
            if m
        }
    return out, hits
