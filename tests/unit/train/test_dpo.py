"""DPO training (kaft.train.steps, kaft.train.trainers): the batch loss in closed form, the pair collator, and a
DPO run that moves the adapter toward the chosen answers."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers.train import DPO, ITEMS, lora_state, make_model, preference_answers, sampled_records, spec, train_cfg

from kaft import losses, train

pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- dpo
def _peft_with_random_adapter(tok, seed=0):
    from peft import get_peft_model

    base = make_model(len(tok), seed)
    ref = copy.deepcopy(base)
    model = get_peft_model(base, train.lora_config(train_cfg()["lora"]))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, ref


def _pairs(n=3):
    from kaft.losses.pairs import build_pairs

    # item i answered wrong with option (gold + 1) % 4 twice and (gold + 2) % 4 once
    answers = [[(it.answer + 1) % 4, (it.answer + 1) % 4, (it.answer + 2) % 4, it.answer] for it in ITEMS[:n]]
    return build_pairs(ITEMS[:n], sampled_records(ITEMS[:n], answers), "dataset_self", 8, seed=0, domain="general")


def test_dpo_batch_loss_equals_closed_form_and_shared_rows_change_nothing(tok):
    model, ref = _peft_with_random_adapter(tok)
    pairs = _pairs(3)
    assert len(pairs) == 6
    rows = train.build_pair_examples(tok, pairs, [0.1, 0.5, 1.0], 256)
    shared = train.PairCollator(tok.pad_token_id)(rows)
    separate = train.PairCollator(tok.pad_token_id, share=False)(rows)
    assert shared["input_ids"].shape[0] == 6 and separate["input_ids"].shape[0] == 12  # one-letter answers share
    beta = 0.3
    with torch.no_grad():
        got = {
            (share, sl): train.dpo_batch_loss(model, b, beta, sl)[0].item()
            for share, b in (("shared", shared), ("separate", separate))
            for sl in (True, False)
        }

        # by hand: log p(answer letter | prompt) under the adapted model and under a separate copy of the base model
        def letter_logp(m, prompt, letter):
            ids, _ = train.encode_example(tok, prompt, letter, 256)
            logits = m(input_ids=torch.tensor([ids])).logits[0, -2]
            return torch.log_softmax(logits.double(), -1)[ids[-1]].item()

        want = 0.0
        for p in pairs:
            delta = (letter_logp(model, p["prompt"], p["chosen"]) - letter_logp(ref, p["prompt"], p["chosen"])) - (
                letter_logp(model, p["prompt"], p["rejected"]) - letter_logp(ref, p["prompt"], p["rejected"])
            )
            want += [0.1, 0.5, 1.0][p["index"]] * -math.log(1.0 / (1.0 + math.exp(-beta * delta)))
        want /= len(pairs)
    assert abs(want - math.log(2) * (0.1 + 0.5 + 1.0) * 2 / 6) > 1e-3  # the adapter really moves the policy
    for key, value in got.items():
        assert value == pytest.approx(want, abs=1e-5), key


def test_pair_collator_two_token_answers_take_two_rows(tok):
    rows = [
        {
            "chosen_ids": [5, 6, 7, 8],
            "chosen_labels": [-100, -100, 7, 8],
            "rejected_ids": [5, 6, 9, 8],
            "rejected_labels": [-100, -100, 9, 8],
            "weights": 1.0,
        },
        {
            "chosen_ids": [5, 6, 7],
            "chosen_labels": [-100, -100, 7],
            "rejected_ids": [5, 6, 9],
            "rejected_labels": [-100, -100, 9],
            "weights": 0.5,
        },
    ]
    b = train.PairCollator(pad_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 9, 8], [5, 6, 7, 0]]
    assert b["chosen_row"].tolist() == [0, 2] and b["rejected_row"].tolist() == [1, 2]
    assert b["rejected_labels"].tolist() == [[-100, -100, 9, 8], [-100, -100, 9, -100]]
    assert b["attention_mask"].tolist()[2] == [1, 1, 1, 0]
    assert torch.allclose(b["weights"], torch.tensor([1.0, 0.5]))


def test_train_lora_dpo_changes_adapter_and_prefers_chosen(tok, tmp_path):
    from peft import PeftModel

    base = make_model(len(tok))
    untouched = copy.deepcopy(base)
    answers = preference_answers()  # a learnable preference: not D
    answers[5] = [ITEMS[5].answer] * 4  # always right: no pair
    records = sampled_records(ITEMS, answers)
    cfg = dict(DPO)
    out = tmp_path / "dpo"
    model = train.train_lora(
        base, tok, ITEMS, [1.0] * 8, spec(cfg, train_cfg(epochs=10, lr=5e-2), 0), out, records=records
    )
    assert isinstance(model, PeftModel) and not model.training
    assert any(torch.count_nonzero(v) > 0 for k, v in lora_state(model).items() if "lora_B" in k)
    log = json.loads((out / "train_log.json").read_text())
    assert log["n_pairs"] == 7 and log["n_items_with_pairs"] == 7 and log["global_step"] == 10 * 2
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 7
    assert any("reward_accuracy" in h for h in log["log_history"])

    def margin(m):  # mean log p(chosen) - log p(rejected) over the pairs
        rows = train.build_pair_examples(tok, _pairs_from(records), [1.0] * 8, 256)
        b = train.PairCollator(tok.pad_token_id)(rows)
        with torch.no_grad():
            logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        c = losses.sequence_logps(logits, b["chosen_labels"], b["chosen_row"])
        r = losses.sequence_logps(logits, b["rejected_labels"], b["rejected_row"])
        return (c - r).mean().item()

    before, after = margin(untouched), margin(model)
    assert after > before + 0.4, (before, after)  # measured: -0.14 -> 0.58


def _pairs_from(records):
    from kaft.losses.pairs import build_pairs

    return build_pairs(ITEMS, records, "dataset_self", 8, seed=0, domain="general")


def test_train_lora_dpo_needs_records_with_wrong_samples(tok, tmp_path):
    cfg = {"name": "dpo"}
    base = make_model(len(tok))
    with pytest.raises(ValueError, match="no records were passed"):
        train.train_lora(base, tok, ITEMS, [1.0] * 8, spec(cfg, train_cfg(), 0), tmp_path)
    exact = [
        {"id": it.id, "score": 0.5, "gold": it.answer, "orders": [[0, 1, 2, 3]], "probs": [[0.25] * 4]} for it in ITEMS
    ]
    with pytest.raises(ValueError, match="no record has any.*estimator=sample"):
        train.train_lora(base, tok, ITEMS, [1.0] * 8, spec(cfg, train_cfg(), 0), tmp_path, records=exact)
    right = sampled_records(ITEMS, [[it.answer] * 3 for it in ITEMS])
    with pytest.raises(ValueError, match="no item has both a chosen and a wrong sampled answer"):
        train.train_lora(base, tok, ITEMS, [1.0] * 8, spec(cfg, train_cfg(), 0), tmp_path, records=right)
    # other losses ignore records
    train.train_lora(
        base, tok, ITEMS, [1.0] * 8, spec({"name": "constant"}, train_cfg(), 0), tmp_path / "c", records=right
    )
