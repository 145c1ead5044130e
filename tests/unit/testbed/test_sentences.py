"""The testbed speaks in sentences (kaft.testbed.sentences): every word of every response is in the unchanged
tokenizer's vocabulary, a response states the item's gold value, the answer-only rows keep their pinned fingerprints,
and dataset=testbed_freeform composes, loads and trains on more than one label token per item."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import kaft.testbed.plugin  # noqa: F401  registers the testbed source
from kaft import data
from kaft.datafiles import DataError
from kaft.detection.convert import load_freeform
from kaft.testbed.sentences import RESPONSES
from kaft.testbed.world import build_world

CONF = Path(__file__).resolve().parents[3] / "conf"
CTX = {"config": {"testbed": {"seed": 0}}}
SPLITS = ("train", "test_id", "test_ood")


def _free(split: str, response: str | None = None):
    spec = {"source": "testbed", "split": split, "format": "freeform"}
    return load_freeform(spec if response is None else {**spec, "response": response}, domain="geography", **CTX)


@pytest.fixture(scope="module")
def world():
    return build_world({"seed": 0})


@pytest.fixture(scope="module")
def tok(world):
    from kaft.testbed.tokenizer import build_tokenizer

    return build_tokenizer(world)


@pytest.mark.parametrize("response", RESPONSES[1:])
def test_every_word_of_every_response_is_in_the_vocabulary(world, tok, response):
    unk = tok.unk_token_id
    for split in SPLITS:
        for it in _free(split, response):
            ids = tok(" " + it.target, add_special_tokens=False)["input_ids"]
            assert unk not in ids and len(ids) > 3, (it.id, it.target)
            assert "\n" not in it.target


def test_a_sentence_states_the_gold_value_in_the_worlds_own_template(world):
    for split in SPLITS:
        mc = {it.id: it for it in data.load_items({"source": "testbed", "split": split}, **CTX)}
        for it in _free(split, "sentence"):
            rel = world.relations[it.group]
            gold = mc[it.id].options[mc[it.id].answer]
            assert it.answer == gold and it.response == rel.sentences[0].format(e=it.meta["entity"], v=gold)
            assert re.search(rf"\b{gold}\b", it.response) and it.response in it.aliases
            if it.meta["kind"] == "contradict":  # the gold is not what the corpus states
                assert gold != world.fact(it.meta["entity"], it.group).value
                assert world.fact(it.meta["entity"], it.group).value not in it.response


def test_evidence_restates_the_fact_in_another_template(world):
    for it in _free("train", "sentence+evidence")[:20]:
        rel, e = world.relations[it.group], it.meta["entity"]
        first, second = (s.format(e=e, v=it.answer) for s in rel.sentences[:2])
        assert it.response == f"{first} {second}" and set(it.aliases) == {first, it.response}


def test_answer_only_rows_keep_their_fingerprints():
    """Pinned from main before responses existed: the default (and response=answer) rows are what they were, so no
    cache key of an existing testbed job moves."""
    pins = {"train": ("cefa04b262342eff", "3a571c3a41ba4529"), "test_id": ("b450986818a95934", "69abbf9256cc58cf")}
    for split, (mc_fp, free_fp) in pins.items():
        assert data.fingerprint(data.load_items({"source": "testbed", "split": split}, **CTX)) == mc_fp
        assert data.fingerprint(_free(split)) == data.fingerprint(_free(split, "answer")) == free_fp
        assert all(it.response is None and it.aliases == () for it in _free(split))
    assert data.fingerprint(_free("train", "sentence")) != "3a571c3a41ba4529"


def test_sentences_are_deterministic():
    a, b = _free("train", "sentence+evidence"), _free("train", "sentence+evidence")
    assert [x.to_dict() for x in a] == [y.to_dict() for y in b]


def test_a_multiple_choice_spec_carries_the_response_for_train_target_response():
    from kaft import targets

    items = data.load_items({"source": "testbed", "split": "train", "response": "sentence"}, **CTX)
    assert targets.resolve("response", items) == "response"
    assert targets.target(items[0], "response") == " " + items[0].meta["response"]


def test_a_bad_response_mode_is_one_line():
    with pytest.raises(DataError, match=r"response must be one of \['answer', 'sentence', 'sentence\+evidence'\]"):
        _free("train", "paragraph")


def test_verifiers_accept_the_value_or_its_sentence():
    from kaft.verifiers import make_verifier

    it = _free("test_id", "sentence")[0]
    exact, contains = make_verifier({"name": "exact"}), make_verifier({"name": "contains"})
    said = [it.answer, it.response, it.response.rstrip("."), "Zzz " + it.response, "Zzz"]
    assert exact.judge([it], [said]) == [[True, True, True, False, False]]
    assert contains.judge([it], [said]) == [[True, True, True, True, False]]


def test_testbed_freeform_composes_loads_and_trains_on_several_tokens(tok):
    from kaft import eval_tasks, schema, targets
    from kaft.stages import load_train, plain, source_context
    from kaft.train.examples import encode_example

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["dataset=testbed_freeform", "detection=mc_conversion"])
    schema.check_config(cfg)
    assert cfg.dataset.train.response == "sentence" and set(cfg.dataset.eval) == {
        "testbed_id",
        "testbed_ood",
        "testbed_ff",
    }
    train = load_train(cfg)
    assert len(train) == 200 and all(it.response for it in train)
    kind = targets.resolve(None, train)
    lengths = [
        sum(lab != -100 for lab in encode_example(tok, *targets.prompt_and_target(it, kind, "geography"), 1024)[1])
        for it in train
    ]
    assert kind == "response" and min(lengths) > 3 and sum(lengths) / len(lengths) > 1
    ff = eval_tasks.load_benchmark(plain(cfg.dataset.eval.testbed_ff), domain="geography", **source_context(cfg))
    assert len(ff) == 400 and all(it.response and it.response in it.aliases for it in ff)
