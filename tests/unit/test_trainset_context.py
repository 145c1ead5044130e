"""Ren et al.'s contextualized IFT (Exp-II, §5; train.context=true): each training item's context opens its question
at training time only. The default job keeps its keys and identity (tests/unit/test_target_keys.py pins them with
``context: false`` in conf/train/lora.yaml); a context is read from a mapped column or written by the testbed."""

from __future__ import annotations

import json

import pytest
from test_target_keys import MC, PINNED, _cfg, _keys

from kaft import data as data_mod
from kaft import identity, trainset
from kaft.datafiles import DataError
from kaft.errors import ConfigError
from kaft.items import MCItem


def _with_context(items):
    return [MCItem(it.id, it.question, it.options, it.answer, meta={"context": f"fact {it.id}."}) for it in items]


def test_context_opens_the_question_only_when_asked():
    items = _with_context(MC)
    assert trainset.contextualize(_cfg([]), items) == items
    out = trainset.contextualize(_cfg(["train.context=true"]), items)
    assert [it.question for it in out] == [f"fact i{i}. q{i} ?" for i in range(4)]
    assert [(it.id, it.options, it.answer) for it in out] == [(it.id, it.options, it.answer) for it in items]


def test_context_off_keeps_every_key_and_on_trains_another_adapter(tmp_path):
    detect, train, ident = PINNED[()]
    assert "context" not in identity.config_part(_cfg([]), None)["train"]  # a new default, left out
    cfg = _cfg(["train.context=true"])
    on = _keys(cfg, tmp_path, trainset.contextualize(cfg, _with_context(MC)))
    assert on[0] == detect and on[1] != train and on[2] != ident


def test_a_context_run_without_contexts_stops_with_one_line():
    trainset.check_context(_cfg([]), MC)  # off: nothing needed
    with pytest.raises(ConfigError, match=r"4 of 4 items have no context \(first: 'i0'\).*fields.context=<column>"):
        trainset.check_context(_cfg(["train.context=true"]), MC)
    trainset.check_context(_cfg(["train.context=true"]), _with_context(MC))


def test_a_mapped_context_column_is_kept_as_meta(tmp_path):
    rows = [{"question": "q ?", "options": ["a", "b"], "answer": 0, "knowledge": "a is right."}]
    items = data_mod.normalize_rows(rows, "t", {"context": "knowledge"}, 0)
    assert items[0].meta["context"] == "a is right."
    assert "context" not in data_mod.normalize_rows(rows, "t", None, 0)[0].meta  # opt-in: fingerprints stay
    with pytest.raises(DataError, match="a context must be text"):
        data_mod.normalize_rows([{**rows[0], "knowledge": 3}], "t", {"context": "knowledge"}, 0)
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(DataError, match="'context' .* is read only by the testbed source"):
        data_mod.check_spec({"source": "local", "path": str(path), "context": "evidence"})


def test_the_testbed_writes_each_facts_evidence_with_the_items_gold():
    from kaft.testbed.plugin import read_split
    from kaft.testbed.world import build_world

    world = build_world({})
    rows = list(read_split("train", {"testbed": {}}, context="evidence"))
    plain = list(read_split("train", {"testbed": {}}))
    assert [{**r, "meta": {k: v for k, v in r["meta"].items() if k != "context"}} for r in rows] == plain
    for r in rows:
        gold = r["options"][r["answer"]]
        assert gold in r["meta"]["context"] and r["meta"]["entity"] in r["meta"]["context"]
    kinds = {r["meta"]["kind"] for r in rows}
    assert "contradict" in kinds  # a contradicting item's context states its gold, not the memorised value
    c = next(r for r in rows if r["meta"]["kind"] == "contradict")
    assert (
        world.relations[c["meta"]["relation"]].sentences[1].format(e=c["meta"]["entity"], v=c["options"][c["answer"]])
        == c["meta"]["context"]
    )
    with pytest.raises(DataError, match="context must be one of"):
        list(read_split("train", {"testbed": {}}, context="gold"))
