"""World knobs that say what the wrong subset holds (issue 24): which of the planted contradictions really contradict,
and whether the benchmark asks about what the training set teaches.

Why they exist: on the default world no test item asks about anything a training item teaches (the splits are
disjoint sets of facts), so dropping the wrong subset (``strategy=no_conflict``) can lose nothing that the benchmark
sees, and KaFT's soft weights (KaFT §2.3, Eq. 2: the wrong subset kept at reward α) have nothing to pay for. KaFT
credits its margin over no-conflict (Table 2) to the conflicting subset "still teaching something"; these knobs
build worlds where it does, by how much:

``contradict_keep`` (purity; default 1.0)
    the share of the planted ``contradict`` training items that keep their contradicting gold; the others are asked
    with the memorised value as gold (their kind becomes ``known``, ``meta["planted"] = "contradict"``). Fewer real
    contradictions leave the detector's lowest subset to items the base model is merely unsure of (never-seen, rare
    facts), so its precision falls. Unlike ``train_mix``, which also sets the share of contradictions, this keeps the
    world, its corpus and hence the pretrained model the same, so cells of a sweep differ in the labels only and pair
    on one model per seed.
``test_on_train_frac`` / ``test_on_train_kinds`` (tested knowledge; default 0.0 / [unseen, latent])
    that share of the in-domain test items (``test_id``) is replaced by items that ask, in other words
    (:attr:`Relation.rephrased <kaft.testbed.templates.Relation.rephrased>`, fresh options in a fresh order), about
    training facts of those kinds, with the training item's gold: learning them from any subset, the wrong one
    included, shows on the benchmark. Their kind is ``retest_<kind>`` (``meta["train_id"]`` names the training
    item). The default kinds are the ones the issue names: facts the base model does not know (never seen) or barely
    recalls (rare), which a low-Score subset holds besides the contradictions. ``contradict`` may be added: it
    re-asks a contradicting item with the *training set's* gold, the reading where the corpus was out of date and
    the fine-tuning data right (a knowledge update) - the case where dropping loses most. kaft's default reading (the
    corpus is the truth, the contradicting label is wrong; the benchmark asks held-out facts) is the other end.

Each knob at its default draws no random number and returns the splits as they were (a test compares them), and
none changes the corpus or the vocabulary (a test compares them too), so the pretrained model is the same at every
value: :data:`kaft.testbed.config.SPLIT_ONLY` leaves them out of the model's build key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from kaft.items import MCItem
from kaft.testbed.config import WorldConfigError
from kaft.testbed.templates import Relation
from kaft.testbed.worldgen import KINDS, Fact, draw_options, seeded_rng

RETEST = "retest_"  #: kind prefix of a test item that re-asks a training fact


def check_knobs(w: Mapping) -> None:
    """Refuse knob values that cannot build a world, naming the key."""
    for key in ("contradict_keep", "test_on_train_frac"):
        v = w[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise WorldConfigError(f"testbed world.{key} must be a number in [0, 1], got {v!r}")
    kinds = w["test_on_train_kinds"]
    if isinstance(kinds, str) or not kinds or set(kinds) - set(KINDS):
        raise WorldConfigError(
            f"testbed world.test_on_train_kinds must be a non-empty list of {list(KINDS)}, got {kinds!r}"
        )


def apply_knobs(
    splits: dict[str, list[MCItem]],
    facts: list[Fact],
    pools: Mapping[str, list[str]],
    rels: Mapping[str, Relation],
    w: Mapping,
    seed: int,
) -> dict[str, list[MCItem]]:
    """The splits with the knobs applied: purity first (it decides which items still contradict), then the
    re-asked training facts. Each knob draws from a stream of its own, and only off its default."""
    check_knobs(w)
    index = {(f.entity, f.relation): f for f in facts}
    if float(w["contradict_keep"]) < 1.0:
        splits = {**splits, "train": _relabel(splits["train"], index, float(w["contradict_keep"]), seed)}
    if float(w["test_on_train_frac"]) > 0.0:
        splits = {**splits, "test_id": _retest(splits, index, pools, rels, w, seed)}
    return splits


def _relabel(train: list[MCItem], index: Mapping, keep: float, seed: int) -> list[MCItem]:
    """All but ``round(keep * n)`` of the ``n`` contradicting items asked with their memorised value as gold (it is
    among their options: a contradicting item's distractors hold it), in place in the training order."""
    ids = [it.id for it in train if it.meta.get("kind") == "contradict"]
    n_off = len(ids) - round(keep * len(ids))
    off = set(seeded_rng(seed, "contradict-keep").sample(ids, n_off))
    out = []
    for it in train:
        if it.id in off:
            f = index[(it.meta["entity"], it.meta["relation"])]
            meta = {**it.meta, "kind": "known", "planted": "contradict"}
            it = dataclasses.replace(it, answer=it.options.index(f.value), meta=meta)
        out.append(it)
    return out


def _retest(
    splits: Mapping[str, list[MCItem]],
    index: Mapping,
    pools: Mapping[str, list[str]],
    rels: Mapping[str, Relation],
    w: Mapping,
    seed: int,
) -> list[MCItem]:
    """``test_id`` with its last ``round(frac * n_test_id)`` items (a random share: the split is shuffled) replaced
    by re-asks of training items of ``test_on_train_kinds``, then shuffled."""
    test = splits["test_id"]
    n = round(float(w["test_on_train_frac"]) * len(test))
    kinds = set(w["test_on_train_kinds"])
    cand = [it for it in splits["train"] if it.meta.get("kind") in kinds]
    if n > len(cand):
        raise WorldConfigError(
            f"testbed world.test_on_train_frac={w['test_on_train_frac']} asks {n} of {len(test)} test items about "
            f"training facts of kinds {sorted(kinds)}, but the training set has {len(cand)}; lower it to at most "
            f"{len(cand) / max(1, len(test)):.3f} or add kinds"
        )
    rng = seeded_rng(seed, "test-on-train")
    asked = []
    for it in rng.sample(cand, n):
        f = index[(it.meta["entity"], it.meta["relation"])]
        gold = it.options[it.answer]  # what fine-tuning teaches
        must = (f.value,) if gold != f.value else ()  # a contradiction re-asked keeps the memorised distractor
        opts, ans = draw_options(rng, list(pools[f.relation]), gold, must=must)
        asked.append(
            MCItem(
                id=f"tb-test_id-re-{f.entity.lower()}-{f.relation}",
                question=rels[f.relation].rephrased.format(e=f.entity),
                options=opts,
                answer=ans,
                subject=it.subject,
                domain=it.domain,
                meta={**it.meta, "kind": RETEST + it.meta["kind"], "train_id": it.id},
            )
        )
    out = test[: len(test) - n] + asked
    rng.shuffle(out)
    return out
