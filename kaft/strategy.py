"""Data strategies: which training items (and which answers) a job fine-tunes on — the KaFT paper's baselines.

``strategy=`` acts after detection and partition, before training. It keeps some of the training items, or
relabels some, and never touches anything else (the loss still gives each kept item its reward):

=============  ===============================================================  ==================================
name           trains on                                                        paper
=============  ===============================================================  ==================================
full           every item (vanilla SFT with ``loss=constant``, KaFT with kaft)  the main comparison
no_conflict    every item but the wrong subset (subset 0)                       No-Conflict baseline
self_align     every item; wrong-subset answers replaced by the model's own     Self-Align baseline (KaFT §4.1,
               answer r_i (``answer_source``: greedy | majority)                after Ren et al.'s SELF)
wrong_only     the wrong subset only                                            Table 9, the "wrong" row
subset         one subset by name, or ``random``: a seeded sample of the same   Table 9 (equal sizes)
               size as the subsets
wrong_ratio    round(λ·|wrong|) wrong items (seeded) + every other item         Table 10
none           nothing: the base model is only evaluated                        the "base" rows
har / inc      items the model answers right / wrong, confidently (equal sizes) Ren et al. (2024) HAR / INC
self           INC's items with the model's own answers                         Ren et al. (2024) SELF (§3.3)
=============  ===============================================================  ==================================

Strategies live in :data:`STRATEGIES` (``name -> Strategy``); add one with ``@register(name, keys=...)``. Each
is a pure function of the config, the partition and the detection records that returns the item indices to keep
and any replaced answers; :func:`select` turns that into a :class:`Selection` whose lists stay aligned.

Kept items are always in their original order. Random draws rank items by ``sha256(f"{seed}|{tag}|{id}")`` (as
:mod:`kaft.partition` breaks ties): a draw depends only on the seed and the ids — not on file order, batching or
Python's RNG — and draws are nested, so under one seed a smaller λ keeps a subset of what a larger λ keeps.

:func:`validate` needs only the config and the subset names (or K), so a bad ``strategy.*`` stops a run before any
model loads. :func:`accuracy_by_subset` is the paper's Table 1 fine-grained evaluation (test items probed and
partitioned into the same K subsets, accuracy per subset).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from kaft.data import MCItem
from kaft.partition import subset_names

WRONG = 0            # subset 0 holds the lowest scores: the items that conflict most with the model
RANDOM = "random"    # ``strategy.subset`` value for a random sample of one subset's size
ID_LIST_LIMIT = 20   # at most this many ids are listed in ``Selection.info`` (the sha256 identifies the full set)


class StrategyError(ValueError):
    """An impossible strategy config, or detection records that cannot feed the strategy; one actionable line."""


@dataclass(frozen=True)
class Selection:
    """What a job trains on: ``items``, ``weights``, ``records``, ``subsets`` and ``indices`` (positions in the
    input) are aligned; ``train`` is False when nothing is trained (``none``); ``info`` is small, for
    results.json (counts, a hash of the kept ids, a few dropped / replaced ids)."""

    items: list[MCItem]
    weights: list[float]
    records: list[dict]
    subsets: list[int]
    indices: list[int]
    train: bool = True
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Everything a strategy may look at (all lists aligned with ``items``)."""

    cfg: Mapping
    items: Sequence[MCItem]
    records: Sequence[Mapping]
    subsets: Sequence[int]
    names: Sequence[str]
    seed: int

    def indices_in(self, subset: int) -> list[int]:
        return [i for i, s in enumerate(self.subsets) if s == subset]

    def data_seed(self) -> int:
        """``strategy.data_seed`` when given, else the run's seed."""
        ds = self.cfg.get("data_seed")
        return self.seed if ds is None else int(ds)


@dataclass(frozen=True)
class Pick:
    """A strategy's answer: the indices to keep, replaced answers ``{index: new answer}``, and extra info."""

    keep: list[int]
    answers: dict[int, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: Callable[[Context], Pick]
    keys: frozenset[str]                         # config keys accepted besides ``name``
    check: Callable[[Mapping, list[str]], None]  # key-specific validation (after the unknown-key check)
    train: bool = True
    # needs the sampled answers of detection (``records[i]["answers"]``): a flag, or a function of the config
    needs_samples: bool | Callable[[Mapping], bool] = False


STRATEGIES: dict[str, Strategy] = {}


def _no_check(cfg: Mapping, names: list[str]) -> None:
    return None


def register(name: str, *, keys: Sequence[str] = (), check: Callable[[Mapping, list[str]], None] = _no_check,
             train: bool = True, needs_samples: bool | Callable[[Mapping], bool] = False):
    """Add the decorated ``fn(ctx: Context) -> Pick`` to :data:`STRATEGIES` as ``name``."""

    def deco(fn: Callable[[Context], Pick]) -> Callable[[Context], Pick]:
        STRATEGIES[name] = Strategy(name, fn, frozenset(keys), check, train, needs_samples)
        return fn

    return deco


# ----------------------------------------------------------------------------------------------- helpers
def _rank(seed: int, tag: str, item_id: str) -> str:
    return hashlib.sha256(f"{seed}|{tag}|{item_id}".encode()).hexdigest()


def _draw(ctx: Context, pool: Sequence[int], n: int, tag: str, seed: int) -> list[int]:
    """``n`` of the ``pool`` indices, chosen by their seeded hash rank, returned in original order."""
    chosen = sorted(pool, key=lambda i: _rank(seed, tag, ctx.items[i].id))[:n]
    return sorted(chosen)


def _check_seed(cfg: Mapping) -> None:
    ds = cfg.get("data_seed")
    if ds is not None and (isinstance(ds, bool) or not isinstance(ds, int)):
        raise StrategyError(f"strategy.data_seed must be an integer or null (null = the run's seed), got {ds!r}")


def _check_subset(cfg: Mapping, names: list[str]) -> None:
    _check_seed(cfg)
    sub = cfg.get("subset")
    if sub not in (*names, RANDOM):
        raise StrategyError(f"strategy.subset={sub!r} is not a subset of this partition (k={len(names)}); "
                            f"choose one of {[*names, RANDOM]}")


def _check_ratio(cfg: Mapping, names: list[str]) -> None:
    _check_seed(cfg)
    r = cfg.get("ratio")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
        raise StrategyError(f"strategy.ratio must be a number in [0, 1] (the share of the wrong subset kept), "
                            f"got {r!r}")


def n_wrong_kept(ratio: float, n_wrong: int) -> int:
    """round(λ·|wrong|), halves rounded up (not Python's round-half-to-even): ``floor(λ·n + 0.5)``."""
    return min(n_wrong, int(math.floor(float(ratio) * n_wrong + 0.5)))


# ----------------------------------------------------------------------------------------------- strategies
@register("full")
def _full(ctx: Context) -> Pick:
    """Every item: vanilla SFT (``loss=constant``) or KaFT (``loss=kaft``) decide only how each one counts."""
    return Pick(list(range(len(ctx.items))))


@register("no_conflict")
def _no_conflict(ctx: Context) -> Pick:
    """Drop the wrong subset: the usual fix of filtering conflicting data, which KaFT argues wastes it."""
    return Pick([i for i, s in enumerate(ctx.subsets) if s != WRONG])


@register("wrong_only")
def _wrong_only(ctx: Context) -> Pick:
    """Only the wrong subset: the paper's catastrophic case, SFT on the largest conflicts."""
    return Pick(ctx.indices_in(WRONG))


@register("subset", keys=("subset", "data_seed"), check=_check_subset)
def _subset(ctx: Context) -> Pick:
    """One subset by name, or ``random``: the size of subset 0 (the largest when K does not divide N) drawn from
    all items with ``data_seed`` (null: the run's seed), so every row of Table 9 trains on equally many items."""
    sub = ctx.cfg.get("subset")
    if sub == RANDOM:
        n = len(ctx.indices_in(WRONG))
        return Pick(_draw(ctx, range(len(ctx.items)), n, "subset-random", ctx.data_seed()),
                    info={"random_size": n, "data_seed": ctx.data_seed()})
    return Pick(ctx.indices_in(list(ctx.names).index(sub)))


@register("wrong_ratio", keys=("ratio", "data_seed"), check=_check_ratio)
def _wrong_ratio(ctx: Context) -> Pick:
    """Keep ``n_wrong_kept(λ, |wrong|)`` wrong items, drawn with ``data_seed`` (null: the run's seed), plus every item
    of the other subsets: λ = 0 is ``no_conflict``, λ = 1 is ``full`` (Table 10)."""
    wrong = ctx.indices_in(WRONG)
    n = n_wrong_kept(ctx.cfg["ratio"], len(wrong))
    kept_wrong = set(_draw(ctx, wrong, n, "wrong-ratio", ctx.data_seed()))
    keep = [i for i, s in enumerate(ctx.subsets) if s != WRONG or i in kept_wrong]
    return Pick(keep, info={"ratio": float(ctx.cfg["ratio"]), "data_seed": ctx.data_seed(), "wrong_kept": n,
                            "wrong_total": len(wrong)})


ANSWER_SOURCES = ("greedy", "majority")
CONFIDENCE = 0.5  # Ren et al. App. A.1: "responses with a confidence level exceeding 0.5"


def _check_answer_source(cfg: Mapping, names: list[str]) -> None:
    src = cfg.get("answer_source", "greedy")
    if src not in ANSWER_SOURCES:
        raise StrategyError(f"strategy.answer_source must be one of {list(ANSWER_SOURCES)} (greedy: the argmax letter "
                            f"of the original-order query, KaFT §2.2's r_i; majority: the most frequent sampled "
                            f"answer), got {src!r}")


def _check_ren(cfg: Mapping, names: list[str]) -> None:
    _check_seed(cfg)
    flag = cfg.get("confident_only", True)
    if not isinstance(flag, bool):
        raise StrategyError(f"strategy.confident_only must be true (Ren et al. App. A.1: keep answers with "
                            f"confidence > 0.5) or false, got {flag!r}")


def greedy_answer(rec: Mapping) -> int | None:
    """The model's greedy answer to the original-order query (original option index), where the record holds it:
    ``greedy`` (set by kaft.run's greedy probe), ICL's ``pred`` (argmax letter, one order: the original), or the
    argmax of the letter probabilities of the identity order (``exact`` estimator). None when it does not."""
    if rec.get("greedy") is not None:
        return int(rec["greedy"])
    if rec.get("letter_probs") is not None:
        return int(rec["pred"])
    for order, probs in zip(rec.get("orders") or [], rec.get("probs") or []):
        if list(order) == sorted(order):
            return max(range(len(probs)), key=lambda a: (probs[a], -a))
    return None


def needs_greedy(cfg: Mapping | None) -> bool:
    """Whether the strategy reads each item's greedy answer (:func:`greedy_answer`; kaft.run probes for it when the
    detection records lack it)."""
    cfg = _cfg(cfg)
    return cfg.get("name") == "self_align" and cfg.get("answer_source", "greedy") == "greedy"


def _self_answer(ctx: Context, i: int, source: str) -> int:
    """Item i's own answer by the model under ``source`` (-1: none parsable)."""
    from kaft.detect import majority

    rec = ctx.records[i]
    if source == "greedy":
        g = greedy_answer(rec)
        if g is None:
            raise StrategyError(f"strategy=self_align answer_source=greedy: record {rec.get('id')!r} holds no greedy "
                                f"answer to the original query (kaft.run probes for one; pass records with 'greedy')")
        return g
    if not rec.get("answers") or not any(len(a) for a in rec["answers"]):
        raise StrategyError(f"strategy=self_align needs the sampled answers of detection, but record "
                            f"{rec.get('id')!r} has none; use detection.estimator=sample (or detection=icl), or "
                            f"strategy.answer_source=greedy")
    return majority(rec["answers"])[0]


@register("self_align", keys=("answer_source",), check=_check_answer_source,
          needs_samples=lambda cfg: cfg.get("answer_source", "greedy") == "majority")
def _self_align(ctx: Context) -> Pick:
    """KaFT §4.1 "Self-aligning": each wrong-subset item trained on the model's own response r_i instead of a_i, so
    SFT aligns the format without teaching contradicting facts. ``answer_source``: ``greedy`` — the argmax letter of
    the original-order query (§2.2 defines r_i as the greedy response to (q_i, o_i)); ``majority`` — the most
    frequent of the diversified samples (over all orders, unparsable ignored, ties to the lowest index). Items of
    other subsets never change; a wrong item the model never answered parsably keeps its gold answer."""
    source = ctx.cfg.get("answer_source", "greedy")
    answers, same, unparsable, replaced_ids = {}, 0, 0, []
    for i in ctx.indices_in(WRONG):
        item, pred = ctx.items[i], _self_answer(ctx, i, source)
        if pred < 0:
            unparsable += 1
        elif not pred < len(item.options):
            raise StrategyError(f"strategy=self_align: record {ctx.records[i].get('id')!r} names option {pred}, but "
                                f"item {item.id!r} has {len(item.options)} options; the detection records do not "
                                f"match the training set (re-run detection, e.g. force a cache miss)")
        elif pred == item.answer:
            same += 1
        else:
            answers[i] = pred
            replaced_ids.append(item.id)
    return Pick(list(range(len(ctx.items))), answers,
                info={"answer_source": source, "replaced": len(answers), "kept_gold_agrees": same,
                      "kept_gold_unparsable": unparsable, "replaced_ids": replaced_ids[:ID_LIST_LIMIT]})


def _model_answer(rec: Mapping, name: str) -> tuple[int, bool]:
    """An item's own answer by the model and whether it is confident: ICL's argmax letter and its ``confident``
    flag (top letter probability > 0.5), else the majority of the sampled answers with its share > 0.5."""
    from kaft.detect import majority

    if not rec.get("answers"):
        raise StrategyError(f"strategy={name} needs the model's answers from detection, but record "
                            f"{rec.get('id')!r} has none; use detection=icl (Ren et al.) or estimator=sample")
    pred, share = majority(rec["answers"])
    return pred, bool(rec["confident"]) if "confident" in rec else share > CONFIDENCE


def _ren_groups(ctx: Context, name: str) -> tuple[list[int], list[int], list[int], int]:
    """Model answers, HAR and INC pools, and how many items were set aside as answered non-confidently.

    Ren et al. §3.3: harmonious = the model answers right, incompatible = it answers, and not the gold answer;
    App. A.1: only answers with confidence > 0.5 count (``confident_only``, default true)."""
    confident_only = ctx.cfg.get("confident_only", True)
    preds, har, inc, unsure = [], [], [], 0
    for i, rec in enumerate(ctx.records):
        pred, confident = _model_answer(rec, name)
        preds.append(pred)
        if confident_only and not confident:
            unsure += 1
        elif pred == ctx.items[i].answer:
            har.append(i)
        elif 0 <= pred < len(ctx.items[i].options):
            inc.append(i)
    if not har and not inc:
        raise StrategyError(f"strategy={name}: the model answers none of the {unsure} training items confidently "
                            f"(top probability > {CONFIDENCE}, Ren et al. App. A.1); set strategy.confident_only=false "
                            f"to keep every answer")
    if not har or not inc:
        raise StrategyError(f"strategy={name}: the model agrees with {'all' if not inc else 'none'} of the training "
                            f"answers it answers ({unsure} set aside as not confident), so harmonious and "
                            f"incompatible sets of equal size cannot be built")
    return preds, har, inc, unsure


def _ren_pick(ctx: Context, name: str) -> Pick:
    """HAR, INC or SELF at one size n = min(|HAR|, |INC|), drawn with ``data_seed``; SELF = exactly INC's draw
    (Ren et al. §3.3: "the queries are exactly the same as those in the incompatible set") with the model's answers."""
    preds, har, inc, unsure = _ren_groups(ctx, name)
    n = min(len(har), len(inc))
    info = {"ren_size": n, "har": len(har), "inc": len(inc), "not_confident": unsure,
            "confident_only": ctx.cfg.get("confident_only", True)}
    if name == "har":
        return Pick(_draw(ctx, har, n, "ren-har", ctx.data_seed()), info=info)
    keep = _draw(ctx, inc, n, "ren-inc", ctx.data_seed())
    if name == "inc":
        return Pick(keep, info=info)
    answers = {i: preds[i] for i in keep}
    return Pick(keep, answers, info={**info, "replaced": len(answers)})


@register("har", keys=("data_seed", "confident_only"), check=_check_ren, needs_samples=True)
def _har(ctx: Context) -> Pick:
    """Ren et al. (2024) HAR: items the model already answers right (harmonious), as many as INC has."""
    return _ren_pick(ctx, "har")


@register("inc", keys=("data_seed", "confident_only"), check=_check_ren, needs_samples=True)
def _inc(ctx: Context) -> Pick:
    """Ren et al. (2024) INC: items the model answers with another option than gold (incompatible)."""
    return _ren_pick(ctx, "inc")


@register("self", keys=("data_seed", "confident_only"), check=_check_ren, needs_samples=True)
def _self(ctx: Context) -> Pick:
    """Ren et al. (2024) SELF: INC's items (same ids at the same ``data_seed``), each answer replaced by the model's
    own, so every training answer is wrong and consistent with the model."""
    return _ren_pick(ctx, "self")


@register("none", train=False)
def _none(ctx: Context) -> Pick:
    """No training: the job reports the base model (the paper's base rows)."""
    return Pick([])


# ----------------------------------------------------------------------------------------------- API
def _cfg(cfg: Mapping | None) -> Mapping:
    return {"name": "full"} if cfg is None else cfg


def _names(names: Sequence[str] | int) -> list[str]:
    return subset_names(int(names)) if isinstance(names, int) else list(names)


def get(cfg: Mapping | None) -> Strategy:
    name = _cfg(cfg).get("name")
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def validate(cfg: Mapping | None, names: Sequence[str] | int) -> None:
    """Check ``strategy.*`` against the partition's subset ``names`` (or K); needs no data and no model."""
    cfg = _cfg(cfg)
    strat = get(cfg)
    unknown = sorted(set(cfg) - {"name"} - strat.keys)
    if unknown:
        allowed = sorted(strat.keys)
        raise StrategyError(f"strategy={strat.name} does not take {', '.join(map(repr, unknown))}; "
                            f"{'allowed keys: ' + ', '.join(allowed) if allowed else 'it takes no keys besides name'}")
    strat.check(cfg, _names(names))


def needs_samples(cfg: Mapping | None) -> bool:
    """Whether the strategy needs detection's sampled answers (check with ``detect.saves_samples`` before probing)."""
    flag = get(cfg).needs_samples
    return bool(flag(_cfg(cfg))) if callable(flag) else flag


def trains(cfg: Mapping | None) -> bool:
    """False for ``none``: the job skips training and evaluates the base model only."""
    return get(cfg).train


def _ids_sha(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def select(cfg: Mapping | None, items: Sequence[MCItem], records: Sequence[Mapping], subsets: Sequence[int],
           names: Sequence[str] | int, weights: Sequence[float], seed: int) -> Selection:
    """Apply the strategy; all inputs aligned with ``items`` (``records[i]["id"] == items[i].id``)."""
    cfg = _cfg(cfg)
    names = _names(names)
    validate(cfg, names)
    if not len(items) == len(records) == len(subsets) == len(weights):
        raise StrategyError(f"select: {len(items)} items, {len(records)} records, {len(subsets)} subsets and "
                            f"{len(weights)} weights; give one of each per item")
    for it, rec in zip(items, records):
        if rec.get("id") != it.id:
            raise StrategyError(f"select: record {rec.get('id')!r} is aligned with item {it.id!r}; "
                                f"the detection records do not match the training set")
    strat = STRATEGIES[cfg["name"]]
    pick = strat.fn(Context(cfg, items, records, subsets, names, int(seed)))
    keep = list(pick.keep)
    kept = set(keep)
    sel_items = [dataclasses.replace(items[i], answer=pick.answers[i]) if i in pick.answers else items[i]
                 for i in keep]
    kept_ids = [items[i].id for i in keep]
    dropped = [items[i].id for i in range(len(items)) if i not in kept]
    info = {"strategy": strat.name, "n_in": len(items), "n_kept": len(keep),
            "kept_by_subset": {n: sum(1 for i in keep if subsets[i] == s) for s, n in enumerate(names)},
            "kept_ids_sha256": _ids_sha(kept_ids), "dropped": len(dropped), "dropped_ids": dropped[:ID_LIST_LIMIT],
            **pick.info}
    return Selection(items=sel_items, weights=[float(weights[i]) for i in keep],
                     records=[dict(records[i]) for i in keep], subsets=[int(subsets[i]) for i in keep],
                     indices=keep, train=strat.train, info=info)


def accuracy_by_subset(per_item: Sequence[Mapping], test_ids: Sequence[str], test_subsets: Sequence[int],
                       names: Sequence[str] | int) -> dict[str, dict]:
    """Accuracy per conflict subset of a probed and partitioned test set (Table 1): ``{name: {"acc", "n"}}`` over
    the evaluated rows (``{"id", "answer", "pred"}``, as ``evaluate(per_item=True)`` gives) of each subset; a
    subset with no evaluated row gets ``acc`` NaN and ``n`` 0 (``evaluation.limit`` may evaluate only a prefix)."""
    names = _names(names)
    if len(test_ids) != len(test_subsets):
        raise StrategyError(f"accuracy_by_subset: {len(test_ids)} test ids but {len(test_subsets)} subsets")
    where = dict(zip(test_ids, test_subsets))
    hits = [[0, 0] for _ in names]  # [correct, total] per subset
    for row in per_item:
        if row["id"] not in where:
            raise StrategyError(f"accuracy_by_subset: evaluated item {row['id']!r} is not in the partitioned test "
                                f"set; evaluate the same benchmark that was probed")
        h = hits[int(where[row["id"]])]
        h[0] += int(int(row["pred"]) == int(row["answer"]))
        h[1] += 1
    return {n: {"acc": (c / t if t else math.nan), "n": t} for n, (c, t) in zip(names, hits)}


__all__ = ["ID_LIST_LIMIT", "RANDOM", "STRATEGIES", "Selection", "Strategy", "StrategyError", "accuracy_by_subset",
           "get", "greedy_answer", "n_wrong_kept", "needs_greedy", "needs_samples", "register", "select", "trains",
           "validate"]
