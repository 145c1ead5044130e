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
ren_ratio      INC's items, a share ``ratio`` of them with the model's answers  Ren et al. (2024) Exp-III (§6)
=============  ===============================================================  ==================================

Strategies live in the registry :data:`STRATEGIES`; add one with ``@register(name, settings=...)`` in any module
(:mod:`.subsets` and :mod:`.relabel` hold kaft's own). Each is a pure function of the config, the partition and the detection records that returns the item indices to keep
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
from collections.abc import Mapping, Sequence

from kaft import fields
from kaft.items import MCItem
from kaft.partition import subset_names

# importing .subsets and .relabel registers kaft's own strategies
from kaft.strategy.base import ID_LIST_LIMIT, RANDOM, STRATEGIES, Context, Selection, Strategy, StrategyError, register
from kaft.strategy.relabel import ANSWER_SOURCES, greedy_answer
from kaft.strategy.subsets import n_wrong_kept


# ----------------------------------------------------------------------------------------------- API
def _cfg(cfg: Mapping | None) -> Mapping:
    return {"name": "full"} if cfg is None else cfg


def _names(names: Sequence[str] | int) -> list[str]:
    return subset_names(int(names)) if isinstance(names, int) else list(names)


def get(cfg: Mapping | None) -> Strategy:
    return STRATEGIES.get(_cfg(cfg).get("name"))


def validate(cfg: Mapping | None, names: Sequence[str] | int) -> None:
    """Check ``strategy.*`` against the partition's subset ``names`` (or K); needs no data and no model."""
    cfg = _cfg(cfg)
    strat = get(cfg)
    unknown = sorted(set(cfg) - {"name"} - strat.keys)
    if unknown:
        allowed = sorted(strat.keys)
        near = fields.suggest(unknown[0], allowed)
        raise StrategyError(
            f"strategy={strat.name} does not take {', '.join(map(repr, unknown))}; "
            f"{'allowed keys: ' + ', '.join(allowed) if allowed else 'it takes no keys besides name'}"
            + (f"; did you mean strategy.{near}?" if near else "")
        )
    fields.parse(strat.settings, cfg, "strategy", StrategyError)
    strat.check(cfg, _names(names))


def needs_samples(cfg: Mapping | None) -> bool:
    """Whether the strategy needs detection's sampled answers (check with ``detect.saves_samples`` before probing)."""
    return get(cfg).declares("needs_samples", _cfg(cfg))


def needs_greedy(cfg: Mapping | None) -> bool:
    """Whether the strategy reads each item's greedy answer (:func:`greedy_answer`; kaft.stages probes for it when
    the detection records lack it)."""
    return get(cfg).declares("needs_greedy", _cfg(cfg))


def trains(cfg: Mapping | None) -> bool:
    """False for ``none``: the job skips training and evaluates the base model only."""
    return get(cfg).train


def _ids_sha(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def select(
    cfg: Mapping | None,
    items: Sequence[MCItem],
    records: Sequence[Mapping],
    subsets: Sequence[int],
    names: Sequence[str] | int,
    weights: Sequence[float],
    seed: int,
) -> Selection:
    """Apply the strategy; all inputs aligned with ``items`` (``records[i]["id"] == items[i].id``)."""
    cfg = _cfg(cfg)
    names = _names(names)
    validate(cfg, names)
    if not len(items) == len(records) == len(subsets) == len(weights):
        raise StrategyError(
            f"select: {len(items)} items, {len(records)} records, {len(subsets)} subsets and "
            f"{len(weights)} weights; give one of each per item"
        )
    for it, rec in zip(items, records):
        if rec.get("id") != it.id:
            raise StrategyError(
                f"select: record {rec.get('id')!r} is aligned with item {it.id!r}; "
                f"the detection records do not match the training set"
            )
    strat = STRATEGIES[cfg["name"]]
    pick = strat.fn(Context(cfg, items, records, subsets, names, int(seed)))
    keep = list(pick.keep)
    kept = set(keep)
    sel_items = [dataclasses.replace(items[i], answer=pick.answers[i]) if i in pick.answers else items[i] for i in keep]
    kept_ids = [items[i].id for i in keep]
    dropped = [items[i].id for i in range(len(items)) if i not in kept]
    info = {
        "strategy": strat.name,
        "n_in": len(items),
        "n_kept": len(keep),
        "kept_by_subset": {n: sum(1 for i in keep if subsets[i] == s) for s, n in enumerate(names)},
        "kept_ids_sha256": _ids_sha(kept_ids),
        "dropped": len(dropped),
        "dropped_ids": dropped[:ID_LIST_LIMIT],
        **pick.info,
    }
    return Selection(
        items=sel_items,
        weights=[float(weights[i]) for i in keep],
        records=[dict(records[i]) for i in keep],
        subsets=[int(subsets[i]) for i in keep],
        indices=keep,
        train=strat.train,
        info=info,
    )


def accuracy_by_subset(
    per_item: Sequence[Mapping], test_ids: Sequence[str], test_subsets: Sequence[int], names: Sequence[str] | int
) -> dict[str, dict]:
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
            raise StrategyError(
                f"accuracy_by_subset: evaluated item {row['id']!r} is not in the partitioned test "
                f"set; evaluate the same benchmark that was probed"
            )
        h = hits[int(where[row["id"]])]
        h[0] += int(int(row["pred"]) == int(row["answer"]))
        h[1] += 1
    return {n: {"acc": (c / t if t else math.nan), "n": t} for n, (c, t) in zip(names, hits)}


__all__ = [
    "ANSWER_SOURCES",
    "ID_LIST_LIMIT",
    "RANDOM",
    "STRATEGIES",
    "Selection",
    "Strategy",
    "StrategyError",
    "accuracy_by_subset",
    "get",
    "greedy_answer",
    "n_wrong_kept",
    "needs_greedy",
    "needs_samples",
    "register",
    "select",
    "trains",
    "validate",
]
