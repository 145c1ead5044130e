"""The testbed's planted internal conflicts (``world.internal_pairs``) and the planted cause of every training item.

At its default (0) the knob changes nothing: the world's splits and corpus hash to what they did before the knob
existed (computed with main at 49d2f02), the model's build key and identity hold (config.NEW_KEYS) and so does a job's
identity (kaft.defaults.NEW_DEFAULTS). Set, the pairs exist: the same question, different golds."""

from __future__ import annotations

import hashlib
import json

import pytest

from kaft.defaults import NEW_DEFAULTS
from kaft.diagnosis.causes import GROUND_TRUTH, attribute, causes_block, ground_truth, precision_recall
from kaft.testbed import config as tbc
from kaft.testbed import model as tbm
from kaft.testbed.config import WorldConfigError
from kaft.testbed.planted import planted_cause, planted_causes
from kaft.testbed.world import generate

# sha256[:20] of every split's items and the corpus, computed with the code before world.internal_pairs (49d2f02)
BEFORE = {"{}": "c057520bf685c69711d7", '{"seed": 3}': "557d516f3a5990335079"}


def world_fp(cfg) -> str:
    w = generate(cfg)
    d = {s: [it.to_dict() for it in w.split(s)] for s in w.splits()}
    d["corpus"] = w.corpus()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:20]


@pytest.mark.parametrize("cfg", sorted(BEFORE))
def test_default_world_is_byte_identical_to_before(cfg):
    cfg = json.loads(cfg)
    assert world_fp(cfg) == BEFORE[json.dumps(cfg)]
    assert world_fp({**cfg, "world": {"internal_pairs": 0}}) == BEFORE[json.dumps(cfg)]


def test_the_key_is_registered_at_its_default():
    assert tbc.DEFAULT_CONFIG["world"]["internal_pairs"] == 0 == tbc.NEW_KEYS["world.internal_pairs"]
    assert NEW_DEFAULTS["testbed.world.internal_pairs"] == 0
    assert tbm.model_key({}) == tbm.model_key({"world": {"internal_pairs": 0}})
    # twins change the training split only (a test below compares the corpora): one model for every value
    assert "world.internal_pairs" in tbc.SPLIT_ONLY
    assert tbm.model_key({}) == tbm.model_key({"world": {"internal_pairs": 4}})


def test_pairs_share_the_question_and_differ_in_gold():
    base, w = generate({}).split("train"), generate({"world": {"internal_pairs": 5}})
    train = w.split("train")
    assert len(train) == len(base) + 5
    twins = [it for it in train if it.meta["kind"] == "internal"]
    by_id = {it.id: it for it in train}
    assert len(twins) == 5
    for t in twins:
        orig = by_id[t.meta["pair"]]
        assert orig.meta["kind"] == "known" and orig.meta["pair"] == t.id
        assert orig.question == t.question and orig.meta["entity"] == t.meta["entity"]
        gold, twin_gold = orig.options[orig.answer], t.options[t.answer]
        assert gold != twin_gold and gold in t.options  # the original's gold is one of the twin's distractors
    # the originals keep their order and content (a "pair" in meta aside); the other splits and the corpus are as were
    assert [it.id for it in train if it.meta["kind"] != "internal"] == [it.id for it in base]
    assert all(a.options == b.options and a.answer == b.answer for a, b in zip([t for t in train if t.meta["kind"]
               != "internal"], base))  # fmt: skip
    d = generate({})
    assert w.split("test_id") == d.split("test_id") and w.corpus() == d.corpus()


@pytest.mark.parametrize("n, message", [(-1, "integer >= 0"), (1.5, "integer >= 0"), (10_000, "known items")])
def test_bad_internal_pairs_say_what_to_change(n, message):
    with pytest.raises(WorldConfigError, match=message):
        generate({"world": {"internal_pairs": n}})


def test_planted_cause_per_kind():
    assert planted_cause({"kind": "unseen"}) == "missing_knowledge"
    assert planted_cause({"kind": "contradict"}) == "pretraining_conflict"
    assert planted_cause({"kind": "latent"}) == "insufficient_optimisation"
    assert planted_cause({"kind": "known"}) is None
    assert planted_cause({"kind": "internal", "pair": "x"}) == "internal_conflict"
    assert planted_cause({"kind": "known", "pair": "x"}) == "internal_conflict"
    assert planted_cause({"kind": "known", "stage": 0}, last_stage=1) == "forgetting"
    assert planted_cause({"kind": "unseen", "stage": 1}, last_stage=1) == "missing_knowledge"
    assert planted_causes([{"meta": {"kind": "known", "stage": 0}}]) == [None]  # one stage: not sequential


def test_ground_truth_is_the_testbeds_and_attribution_finds_the_pairs():
    train = generate({"world": {"internal_pairs": 3}}).split("train")
    name, labels = ground_truth(train)
    assert name == "testbed" and labels == planted_causes(train) and "testbed" in GROUND_TRUTH
    assert labels.count("internal_conflict") == 6
    assert GROUND_TRUTH.get("testbed")([]) is None
    # a constructed diagnosis: every pair member unlearned while the base knew it -> internal conflict, found
    rows = [{"unlearned": "pair" in it.meta, "base_correct": True, "base_high_conf_error": False} for it in train]
    out = attribute(rows, train, {"similarity": "exact"})
    assert out["counts"]["internal_conflict"] == 6
    assert precision_recall(out["per_item"], labels)["internal_conflict"]["recall"] == 1.0
    block = causes_block(rows, train, {"similarity": "exact"})["block"]
    assert block["ground_truth"] == "testbed" and block["planted_unlearned"]["internal_conflict"] == 6
    assert block["precision_recall"]["internal_conflict"]["precision"] == 1.0


def test_twins_change_no_corpus_vocabulary_or_format_facts():
    from kaft.testbed.world import generate

    with_twins, before = generate({"world": {"internal_pairs": 6}}), generate({})
    assert with_twins.corpus() == before.corpus() and with_twins.facts == before.facts
    assert with_twins.mc_docs == before.mc_docs and len(with_twins.split("train")) == len(before.split("train")) + 6
