"""The feeds of SMA's and EAFT's extra losses through kaft.train.train_lora on a tiny Llama: loss=sft_self trains on
the model's own correct answers (written to self_answers.jsonl), loss=dpo trains on free-form response pairs, with
and without the SFT + DPO term, and loss=sft_kl trains against its adapter-disabled reference."""

from __future__ import annotations

import json

import pytest
from helpers.train import ITEMS, make_model, spec, train_cfg

from kaft import losses, train
from kaft.items import FreeFormItem
from kaft.train.self_answers import self_answer_rows

pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

FREE = [
    FreeFormItem(id="s", question="what colour is snow ?", answer="white", group="colour"),
    FreeFormItem(id="g", question="what colour is grass ?", answer="green", group="colour"),
    FreeFormItem(id="d", question="which animal barks ?", answer="dog", group="animal", distractors=("cat", "cow")),
]
RECORDS = [
    {"id": "s", "responses": ["white", "red", "white"], "verdicts": [True, False, True]},
    {"id": "g", "responses": ["blue", "green"], "verdicts": [False, True]},
    {"id": "d", "responses": ["cat"], "verdicts": [False]},
]


def test_sft_self_trains_on_the_correct_self_answers(tok, tmp_path):
    out = tmp_path / "self"
    cfg = {"name": "sft_self", "labels": "all"}
    train.train_lora(make_model(len(tok)), tok, FREE, [1.0] * 3, spec(cfg, train_cfg(), 0), out, records=RECORDS)
    kept = [json.loads(line) for line in (out / "self_answers.jsonl").read_text().splitlines()]
    assert [(k["id"], k["target"]) for k in kept] == [("s", " white"), ("g", " green")]
    assert json.loads((out / "train_log.json").read_text())["n_self_answers"] == 2
    mc = [{"id": it.id, "answers": [[it.answer, (it.answer + 1) % 4]]} for it in ITEMS]
    rows, _ = self_answer_rows(
        losses.make_loss({"name": "sft_self"}),
        tok,
        ITEMS,
        [1.0] * 8,
        mc,
        0,
        "general",
        None,
        256,
    )
    assert len(rows) == 8  # multiple choice: each item's gold letter, once


@pytest.mark.parametrize("sft_weight", [0.0, 1.0])
def test_dpo_trains_on_free_form_response_pairs(tok, tmp_path, sft_weight):
    out = tmp_path / f"dpo{sft_weight}"
    cfg = {"name": "dpo", "sft_weight": sft_weight}
    train.train_lora(
        make_model(len(tok)), tok, FREE, [1.0] * 3, spec(cfg, train_cfg(lr=3e-2, epochs=4), 0), out, records=RECORDS
    )
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(" white", " red")] * 2 + [(" green", " blue")]
    log = json.loads((out / "train_log.json").read_text())
    margins = [h["reward_margin"] for h in log["log_history"] if "reward_margin" in h]
    assert log["n_pairs"] == 3 and margins and margins[-1] > margins[0]


def test_sft_kl_trains(tok, tmp_path):
    out = tmp_path / "kl"
    train.train_lora(make_model(len(tok)), tok, ITEMS, [1.0] * 8, spec({"name": "sft_kl"}, train_cfg(epochs=2), 0), out)
    losses_logged = [h["loss"] for h in json.loads((out / "train_log.json").read_text())["log_history"] if "loss" in h]
    assert losses_logged and all(x == x and x > 0 for x in losses_logged)
