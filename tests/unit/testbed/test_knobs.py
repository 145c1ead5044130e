"""Issue 24's world knobs (kaft/testbed/knobs.py): at their defaults the world is the one built before them (same
splits, no extra draws, same model key and job identity); set, they relabel planted contradictions and re-ask
training facts in other words, and never change the corpus or the vocabulary (so one pretrained model serves every
value)."""

from collections import Counter
from pathlib import Path

import pytest
import yaml

from kaft.testbed.config import DEFAULT_CONFIG, NEW_KEYS, SPLIT_ONLY, WorldConfigError, key_config, resolve_config
from kaft.testbed.knobs import RETEST
from kaft.testbed.templates import RELATIONS, _reserved
from kaft.testbed.tokenizer import vocabulary
from kaft.testbed.world import generate

ROOT = Path(__file__).resolve().parents[3]
KNOBS = {"contradict_keep": 1.0, "test_on_train_frac": 0.0, "test_on_train_kinds": ["unseen", "latent"]}


def _splits(world):
    return {n: [it.to_dict() for it in world.split(n)] for n in world.splits()}


def _without_knobs(monkeypatch):
    """The world code as it was before the knobs: their keys gone from the defaults, apply_knobs a no-op."""
    from kaft.testbed import world as tbw

    world = {k: v for k, v in DEFAULT_CONFIG["world"].items() if k not in KNOBS}
    monkeypatch.setitem(DEFAULT_CONFIG, "world", world)
    monkeypatch.setattr(tbw, "apply_knobs", lambda splits, *a: splits)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_defaults_reproduce_the_world_without_the_knobs(monkeypatch, seed):
    with_keys = generate({"seed": seed, "world": dict(KNOBS)})
    with monkeypatch.context() as m:
        _without_knobs(m)
        before = generate({"seed": seed})
    assert _splits(with_keys) == _splits(before)
    assert with_keys.corpus() == before.corpus() and with_keys.facts == before.facts


def test_the_knobs_are_registered_new_keys_at_the_end_of_the_world_section():
    yaml_world = yaml.safe_load((ROOT / "conf/testbed/default.yaml").read_text())["world"]
    for k, v in KNOBS.items():
        assert DEFAULT_CONFIG["world"][k] == yaml_world[k] == NEW_KEYS[f"world.{k}"] == v
        assert f"world.{k}" in SPLIT_ONLY
    from kaft.defaults import NEW_DEFAULTS

    assert all(NEW_DEFAULTS[f"testbed.world.{k}"] == v for k, v in KNOBS.items())


def test_the_model_key_and_job_identity_ignore_the_knobs():
    """One pretrained model per seed for every knob value (the corpus is the same, next test); the job identity
    leaves them out at their defaults only."""
    from kaft import modeling
    from kaft.identity import config_part
    from kaft.testbed.model import model_key

    def ident(section):
        return modeling.resolve({"source": "testbed"}, "c", {"testbed": section}, build=False)[1]

    assert model_key({}) == "ccf2a38133ce7c786537"  # the key every model so far was built under
    set_ = {"seed": 0, "world": {"contradict_keep": 0.5, "test_on_train_frac": 0.2}}
    assert model_key(set_) == model_key({}) and ident(set_) == ident({"seed": 0})
    assert key_config(resolve_config(set_)) == key_config(resolve_config({}))
    job = {"seed": 0, "testbed": {"seed": 0}}
    at_default = {"seed": 0, "testbed": {"seed": 0, "world": dict(KNOBS)}}
    assert config_part(at_default, None) == config_part(job, None)
    assert config_part({"seed": 0, "testbed": set_}, None) != config_part(job, None)


def test_set_knobs_change_no_corpus_vocabulary_or_format_facts():
    base = generate({})
    set_ = generate({"world": {"contradict_keep": 0.25, "test_on_train_frac": 0.2, "test_on_train_kinds": KINDS4}})
    assert set_.corpus() == base.corpus() and vocabulary(set_) == vocabulary(base)
    assert [it.to_dict() for it in set_.format_items(50)] == [it.to_dict() for it in base.format_items(50)]


KINDS4 = ["unseen", "latent", "contradict"]


def test_rephrased_questions_use_only_words_the_world_already_holds():
    words = {w.lower() for w in vocabulary(generate({}))}
    for r in RELATIONS:
        assert r.rephrased and r.rephrased != r.question and r.rephrased.count("{e}") == 1
        assert set(_reserved()) >= {w.lower() for w in r.rephrased.replace("{e}", "").replace("?", " ").split()}
        assert {w.lower() for w in r.rephrased.replace("{e}", "").replace("?", " ").split()} <= words


def test_contradict_keep_relabels_that_share_of_planted_contradictions():
    base, set_ = generate({}), generate({"world": {"contradict_keep": 0.25}})
    b, s = base.split("train"), set_.split("train")
    assert [it.id for it in b] == [it.id for it in s]  # same items, same order, same options
    assert all(x.options == y.options for x, y in zip(b, s))
    planted = [i for i, it in enumerate(b) if it.meta["kind"] == "contradict"]
    still = [i for i in planted if s[i].meta["kind"] == "contradict"]
    assert len(still) == round(0.25 * len(planted)) == 10
    for i in planted:
        if i not in still:  # the memorised value is the gold now
            f = base.fact(b[i].meta["entity"], b[i].meta["relation"])
            assert s[i].options[s[i].answer] == f.value and s[i].meta == {
                **b[i].meta,
                "kind": "known",
                "planted": "contradict",
            }
    rest = [i for i in range(len(b)) if i not in planted]
    assert all(b[i] == s[i] for i in rest) and set_.split("test_id") == base.split("test_id")


def test_test_on_train_frac_reasks_training_facts_of_those_kinds_in_other_words():
    base = generate({})
    set_ = generate({"world": {"test_on_train_frac": 0.2}})
    test, train = set_.split("test_id"), {it.id: it for it in base.split("train")}
    re = [it for it in test if it.meta["kind"].startswith(RETEST)]
    assert len(test) == 400 and len(re) == 80  # the share of the benchmark, its size kept
    assert Counter(it.meta["kind"] for it in re).keys() <= {"retest_unseen", "retest_latent"}
    held = {it.id for it in base.split("test_id")}
    assert all(it.id in held for it in test if it not in re) and len(held & {it.id for it in test}) == 320
    for it in re:
        t = train[it.meta["train_id"]]
        assert RETEST + t.meta["kind"] == it.meta["kind"] and t.meta["kind"] in ("unseen", "latent")
        assert it.question != t.question and it.question == set_.relations[t.subject].rephrased.format(
            e=t.meta["entity"]
        )
        assert it.options[it.answer] == t.options[t.answer]  # the gold fine-tuning teaches
    assert set_.split("train") == base.split("train")


def test_a_reasked_contradiction_keeps_the_training_gold_and_the_memorised_distractor():
    set_ = generate({"world": {"test_on_train_frac": 0.1, "test_on_train_kinds": ["contradict"]}})
    train = {it.id: it for it in set_.split("train")}
    re = [it for it in set_.split("test_id") if it.meta["kind"] == "retest_contradict"]
    assert len(re) == 40
    for it in re:
        t, f = train[it.meta["train_id"]], set_.fact(it.meta["entity"], it.meta["relation"])
        assert it.options[it.answer] == t.options[t.answer] != f.value and f.value in it.options


@pytest.mark.parametrize(
    "world, match",
    [
        ({"contradict_keep": 1.5}, "contradict_keep must be a number in"),
        ({"test_on_train_frac": -0.1}, "test_on_train_frac must be a number in"),
        ({"test_on_train_frac": "x"}, "test_on_train_frac must be a number in"),
        ({"test_on_train_kinds": ["nope"]}, "test_on_train_kinds must be a non-empty list"),
        ({"test_on_train_kinds": "unseen"}, "test_on_train_kinds must be a non-empty list"),
        ({"test_on_train_frac": 0.5}, "lower it to at most 0.225"),
    ],
)
def test_bad_knob_values_are_one_line_errors(world, match):
    with pytest.raises(WorldConfigError, match=match):
        generate({"world": world})
