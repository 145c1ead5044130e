"""train.target through kaft.train.examples: a letter target is today's example token for token, option and
response targets put a label on every target token (and EOS after a response with train.response_eos) and on no
prompt token, the prompt
is cut from the left and a target never, and train_lora records what it trained on."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers.train import ITEMS, make_model, spec, train_cfg

from kaft import targets, train
from kaft.errors import ConfigError
from kaft.items import FreeFormItem
from kaft.prompts import DEFAULT_INSTRUCTION, FREEFORM_INSTRUCTION, format_freeform, format_question

pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

RESPONSE = "the sky is blue ."
MC_RESPONSE = dataclasses.replace(ITEMS[0], meta={"response": RESPONSE})
FREE = [
    FreeFormItem("f0", "what colour is the sky ?", "blue", response=RESPONSE),
    FreeFormItem("f1", "which animal barks ?", "dog"),  # no response: trains on the reference answer
]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _target_ids(row):
    return [t for t in row["labels"] if t != -100]


def test_letter_target_is_the_example_kaft_always_built(tok):
    for target in (None, "auto", "letter"):
        rows = train.build_examples(tok, ITEMS, [1.0] * len(ITEMS), "general", None, 256, target)
        for it, row in zip(ITEMS, rows):
            prompt = format_question(it.question, it.options, "general", DEFAULT_INSTRUCTION)
            assert (row["input_ids"], row["labels"]) == train.encode_example(tok, prompt, " " + "ABCD"[it.answer], 256)
    assert train.mean_label_tokens(rows) == 1.0


def test_option_target_labels_every_option_token(tok):
    (row,) = train.build_examples(tok, ITEMS[1:2], [1.0], "general", None, 256, "option")
    want = _ids(tok, " B. green")
    assert len(want) > 1 and _target_ids(row) == want
    n_prompt = len(row["labels"]) - len(want)
    assert row["labels"][:n_prompt] == [-100] * n_prompt and row["input_ids"][n_prompt:] == want


def test_response_target_of_a_multiple_choice_item_and_its_eos(tok):
    (row,) = train.build_examples(tok, [MC_RESPONSE], [1.0], "general", None, 256, "response")
    assert _target_ids(row) == _ids(tok, " " + RESPONSE)
    (row,) = train.build_examples(tok, [MC_RESPONSE], [1.0], "general", None, 256, "response", response_eos=True)
    assert _target_ids(row) == [*_ids(tok, " " + RESPONSE), tok.eos_token_id]
    (row,) = train.build_examples(tok, ITEMS[:1], [1.0], "general", None, 256, "option", response_eos=True)
    assert _target_ids(row) == _ids(tok, " A. blue")  # only a response target ends in EOS
    with pytest.raises(ConfigError, match="dataset.train.fields.response"):
        train.build_examples(tok, ITEMS[:1], [1.0], "general", None, 256, "response")


def test_free_form_items_train_on_their_response_or_reference(tok):
    rows = train.build_examples(tok, FREE, [1.0, 1.0], "general", None, 256)  # auto = response on free-form items
    assert _target_ids(rows[0]) == _ids(tok, " " + RESPONSE)
    assert _target_ids(rows[1]) == _ids(tok, " dog")
    prompt = format_freeform(FREE[0].question, "general", FREEFORM_INSTRUCTION)
    assert rows[0]["input_ids"][1 : 1 + len(_ids(tok, prompt))] == _ids(tok, prompt)  # after <s>
    assert train.mean_label_tokens(rows) == (5 + 1) / 2
    for kind in ("letter", "option"):
        with pytest.raises(ConfigError, match="needs multiple-choice items"):
            train.build_examples(tok, FREE, [1.0, 1.0], "general", None, 256, kind)


def test_prompt_is_cut_from_the_left_and_the_target_never(tok):
    full = train.build_examples(tok, FREE[:1], [1.0], "general", None, 256)[0]
    n_target = len(_target_ids(full))
    (cut,) = train.build_examples(tok, FREE[:1], [1.0], "general", None, n_target + 3)
    assert len(cut["input_ids"]) == n_target + 3 and _target_ids(cut) == _target_ids(full)
    assert cut["input_ids"][0] == tok.bos_token_id and cut["input_ids"][1:] == full["input_ids"][-(n_target + 2) :]
    with pytest.raises(train.TrainError, match=r"item 'f0' \(train.target=response\).*a target is never cut"):
        train.build_examples(tok, FREE[:1], [1.0], "general", None, n_target)


def test_resolve_says_what_each_kind_of_data_trains_on():
    assert targets.resolve("auto", ITEMS) == "letter" and targets.resolve(None, FREE) == "response"
    assert targets.resolve("option", ITEMS) == "option"
    with pytest.raises(ConfigError, match="is not one of"):
        targets.resolve("sentence", ITEMS)


def test_train_lora_records_the_target_and_its_label_tokens(tok, tmp_path):
    cfg = train_cfg(target="response", max_length=64)
    train.train_lora(make_model(len(tok)), tok, FREE, [1.0, 1.0], spec({"name": "eaft"}, cfg, 0), tmp_path)
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["target"] == "response" and log["mean_label_tokens"] == 3.0


def test_eaft_on_a_response_gates_each_token_differently(tok):
    """``loss=eaft train.target=response``: EAFT's gate (Eq. 3, top-20 entropy / 3) is one weight per response
    token, and they differ within one response -- not the one per-sample weight a one-letter target gives. The
    model first takes a few SFT steps on the response's first tokens, so its confidence differs from token to
    token (a random tiny model is near-uniform everywhere: every gate ~1)."""
    import torch

    from kaft import losses

    (row,) = train.build_examples(tok, FREE[:1], [1.0], "general", None, 256, "response")
    batch = train.WeightedCollator(tok.pad_token_id)([row])
    labels = batch["labels"]
    pos = (labels[0, 1:] != -100).nonzero(as_tuple=True)[0]
    first = labels.clone()
    first[0, pos[3:] + 1] = -100  # learn "the sky is" only
    model = make_model(len(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        logits = model(input_ids=batch["input_ids"]).logits
        losses.compute_loss({"name": "constant"}, logits, first, [1.0]).backward()
        opt.step()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    gate = losses.eaft_token_weights(logits[0, pos], alpha=1.0, k=20)
    assert gate.numel() == 5 and gate.max() > 2 * gate.min(), gate
    ce = torch.nn.functional.cross_entropy(logits[0, pos], labels[0, pos + 1], reduction="none")
    got = losses.compute_loss({"name": "eaft"}, logits, labels, [1.0])
    assert torch.allclose(got, (gate * ce).sum() / gate.numel(), atol=1e-6)


def test_a_response_column_of_multiple_choice_data_is_what_response_trains_on(tok):
    from kaft.data import DataError, normalize_rows

    rows = [{"question": "what colour is the sky ?", "options": ["blue", "red"], "answer": 0, "why": RESPONSE}]
    (item,) = normalize_rows(rows, "t.jsonl", {"response": "why"})
    assert item.meta == {"response": RESPONSE}
    (row,) = train.build_examples(tok, [item], [1.0], "general", None, 256, "response")
    assert _target_ids(row) == _ids(tok, " " + RESPONSE)
    assert normalize_rows(rows, "t.jsonl")[0].meta == {}  # opt-in: the item (and its fingerprint) as before
    with pytest.raises(DataError, match="row 1: field 'why': a response must be text"):
        normalize_rows([{**rows[0], "why": 3}], "t.jsonl", {"response": "why"})
