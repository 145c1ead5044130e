"""analysis.confident_conflicts on a tiny random model: the value token is found inside the sentence, its
probability and normalised top-20 entropy are what the logits give, EAFT's weights are reported per response, and the
verdict follows the intervals (a fast test: no testbed model is built)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import make_model, make_tokenizer

from analysis import confident_conflicts as cc
from kaft import targets
from kaft.items import FreeFormItem
from kaft.prompts import FREEFORM_INSTRUCTION

TEXTS = (FREEFORM_INSTRUCTION.format(domain="general"), "Question : Answer : What is the capital of ?", "The is .")
VALUES = ("Belmora", "Stavik", "Quorrel", "Dunmere")


def _items():
    kinds = ("known", "latent", "unseen", "contradict")
    return [
        FreeFormItem(
            id=f"i{n}",
            question=f"What is the capital of E{n}?",
            answer=VALUES[n % 4],
            group="capital",
            meta={"kind": kinds[n % 4]},
            response=f"The capital of E{n} is {VALUES[n % 4]}.",
        )
        for n in range(8)
    ]


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer([*TEXTS, *VALUES, *(f"E{n}" for n in range(8))], add_bos=True)
    return make_model(len(tok)), tok


def test_value_token_probability_and_entropy_are_the_logits(tiny):
    model, tok = tiny
    it = _items()[1]
    row = cc.item_stats(model, tok, it)
    prompt = targets.prompt(it, "general")
    ids = tok(prompt + " " + it.response)["input_ids"]  # <s> prompt response, the same split for word-level pieces
    at = ids.index(tok.convert_tokens_to_ids(it.answer))
    with torch.no_grad():
        all_logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logits = all_logits[at - 1]
    p = torch.softmax(logits, -1)
    top = torch.softmax(torch.topk(logits, 20).values, -1)
    h = float(-(top * top.log()).sum()) / math.log(20)
    assert row["p"] == pytest.approx(float(p[ids[at]]), rel=1e-4) and row["h"] == pytest.approx(h, rel=1e-4)
    assert row["p_top"] == pytest.approx(float(p.max()), rel=1e-4) and 0 < row["h"] <= 1
    assert row["w_value"] == pytest.approx(h * math.log(20) / 3.0, rel=1e-4)  # loss=eaft's default gate: H / 3.0
    assert row["n_tokens"] == 7 and row["w_min"] <= row["w_value"] <= row["w_max"]
    first = torch.softmax(all_logits[len(ids) - 8], -1)[ids[-7]]
    assert row["p_first"] == pytest.approx(float(first), rel=1e-4) and row["token_p"][0] == row["p_first"]


def test_measure_summarises_by_kind_and_writes_json(tiny, tmp_path):
    model, tok = tiny
    result = cc.measure(model, tok, _items())
    assert list(result["by_kind"]) == list(cc.KINDS) and all(e["n"] == 2 for e in result["by_kind"].values())
    for e in result["by_kind"].values():
        assert e["p"]["low"] <= e["p"]["mean"] <= e["p"]["high"]
    assert 0 <= result["claims"]["weights_vary_within_response"] <= 1
    b = result["bottom15"]
    assert b["q"] == 0.15 and all(0 <= b[k] <= 1 for k in cc.KINDS) and b["n_region"] >= 1
    assert 0 <= b["first_token_share"] <= 1
    assert all(len(r["token_p"]) == r["n_tokens"] == 7 and r["value_at"] == [5] for r in result["rows"])
    assert "confident conflict (both)" in cc.table(result)
    (tmp_path / "r.json").write_text(json.dumps(result))  # what --json writes: plain JSON


def _row(kind, p, h):
    row = {"kind": kind, "n_tokens": 6, "p": p, "p_top": 0.9, "h": h, "w_value": h, "w_min": 0.0, "w_max": 0.5}
    return {**row, "p_first": 0.0, "h_first": 0.0}


@pytest.mark.parametrize(
    ("contradict", "claim"),
    [((0.01, 0.1), True), ((0.8, 0.1), False), ((0.01, 0.9), False)],
)
def test_the_verdict_needs_both_low_probability_and_low_entropy(contradict, claim):
    jitter = (-0.01, 0.0, 0.01)
    rows = [_row("known", 0.8 + d, 0.1 + d) for d in jitter] + [_row("unseen", 0.01 + d, 0.9 + d) for d in jitter]
    rows += [_row("contradict", contradict[0] + d, contradict[1] + d) for d in jitter]
    out = cc.verdict(cc.summarise(rows), rows)
    assert out["confident_conflict"] is claim and out["weights_vary_within_response"] == 1.0
    assert cc.verdict(cc.summarise(rows[:3]), rows[:3])["confident_conflict"] is None  # no contradict items
