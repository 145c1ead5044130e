"""SMA's pairs from free-form responses (kaft.losses.response_pairs) against hand-counted cases: correct x
incorrect products down-sampled to max_pairs, Table 5's data sources, verdict-less and empty responses discarded,
SFT on self answers, the sampler + verifier records, DPO's free-form pairs and its SFT + DPO term, and the new DPO
keys left out of the cache keys at their defaults."""

from __future__ import annotations

import math

import pytest
import torch

from kaft import losses
from kaft.items import FreeFormItem, MCItem
from kaft.losses.response_pairs import (
    ResponsePairError,
    records_of,
    response_pairs,
    sample_and_judge,
    self_answers,
)
from kaft.prompts import FREEFORM_INSTRUCTION, format_freeform
from kaft.verifiers import make_verifier

ITEMS = [
    FreeFormItem(id="a", question="Who rules Zorvia?", answer="Belmora", group="ruler", domain="geography"),
    FreeFormItem(id="b", question="Who rules Tarn?", answer="Oskel", group="ruler", distractors=("Vell", "Kir")),
    FreeFormItem(
        id="c", question="What is Tarn's export?", answer="salt", group="export", response="Tarn exports salt."
    ),
]


def test_self_self_is_correct_times_incorrect_and_discards_no_verdict_and_empty():
    responses = [["Belmora", "Oskel", "Belmora\nmore text", "", "Kir"], ["Oskel"], ["pepper", "salt"]]
    verdicts = [[True, False, True, False, None], [True], [False, True]]
    pairs = response_pairs(ITEMS, responses, verdicts, seed=0, max_pairs=8)
    a = [(p["chosen"], p["rejected"]) for p in pairs if p["id"] == "a"]
    assert a == [(" Belmora", " Oskel")] * 2  # 2 correct x 1 incorrect (the empty one and "Kir" without verdict gone)
    assert [p["id"] for p in pairs].count("b") == 0  # never wrong: no pair
    c = [p for p in pairs if p["id"] == "c"]
    assert [(p["chosen"], p["rejected"], p["count"]) for p in c] == [(" salt", " pepper", 1)]
    assert c[0]["prompt"] == format_freeform("What is Tarn's export?", "general", FREEFORM_INSTRUCTION)
    assert pairs[0]["prompt"].startswith(FREEFORM_INSTRUCTION.format(domain="geography", last="")[:20])
    assert {(p["chosen_from"], p["rejected_from"]) for p in pairs} == {("self", "self")}


def test_down_sampling_keeps_at_most_max_pairs_seeded_per_item():
    responses = [["Belmora"] * 3 + ["x", "y", "y"], [], []]
    verdicts = [[True] * 3 + [False] * 3, [], []]
    full = response_pairs(ITEMS, responses, verdicts, seed=0, max_pairs=100)
    assert len(full) == 9  # 3 correct x 3 incorrect (SMA: "correct count x incorrect count")
    assert sorted(p["count"] for p in full) == [1, 1, 1, 2, 2, 2, 2, 2, 2]  # "y" was sampled twice
    kept = response_pairs(ITEMS, responses, verdicts, seed=0, max_pairs=4)
    assert len(kept) == 4 and kept == response_pairs(ITEMS, responses, verdicts, seed=0, max_pairs=4)
    draws = {tuple(p["rejected"] for p in response_pairs(ITEMS, responses, verdicts, s, 4)) for s in range(12)}
    assert len(draws) > 1  # a different seed down-samples differently
    # an often-sampled wrong answer gives proportionally more pairs on average (2/3 of the product)
    share = sum(p["rejected"] == " y" for s in range(200) for p in response_pairs(ITEMS, responses, verdicts, s, 3))
    assert abs(share / 600 - 2 / 3) < 0.06


def test_dataset_self_pairs_the_reference_response_with_each_wrong_sample():
    responses = [["Oskel", "Belmora", "Kir"], ["Vell"], ["pepper"]]
    verdicts = [[False, True, False], [False], [False]]
    pairs = response_pairs(ITEMS, responses, verdicts, seed=1, max_pairs=8, mode="dataset_self")
    got = [(p["id"], p["chosen"], p["rejected"]) for p in pairs]
    assert got == [
        ("a", " Belmora", " Oskel"),
        ("a", " Belmora", " Kir"),
        ("b", " Oskel", " Vell"),
        ("c", " Tarn exports salt.", " pepper"),  # the long-form reference response where the item has one
    ]
    assert {(p["chosen_from"], p["rejected_from"]) for p in pairs} == {("dataset", "self")}


def test_dataset_dataset_needs_no_samples_distractors_else_the_group():
    pairs = response_pairs(ITEMS, None, None, seed=0, max_pairs=8, mode="dataset_dataset")
    by = {}
    for p in pairs:
        by.setdefault(p["id"], []).append(p["rejected"])
    assert sorted(by["b"]) == [" Kir", " Vell"]  # the data set's own wrong answers
    assert by["a"] == [" Oskel"]  # no distractors: the other answers of its group (relation)
    assert "c" not in by  # alone in its group, no distractors: no pair
    assert all(p["count"] == 1 and p["rejected_from"] == "dataset" for p in pairs)
    mc = [MCItem(id="m", question="Q?", options=["x", "y", "z"], answer=1)]
    got = [(p["chosen"], p["rejected"]) for p in response_pairs(mc, None, None, 0, 8, "dataset_dataset")]
    assert got == [(" B", " A"), (" B", " C")]  # a multiple-choice item: its other options, as letters


def test_bad_inputs_raise_one_line():
    with pytest.raises(ResponsePairError, match="unknown mode"):
        response_pairs(ITEMS, None, None, 0, 8, "self_other")
    with pytest.raises(ResponsePairError, match="max_pairs"):
        response_pairs(ITEMS, [[]] * 3, [[]] * 3, 0, 0)
    with pytest.raises(ResponsePairError, match="needs one list of responses"):
        response_pairs(ITEMS, [[]], [[]], 0, 8)
    with pytest.raises(ResponsePairError, match="record 1 is for item 'z'"):
        records_of(ITEMS, [{"id": "a"}, {"id": "z"}, {"id": "c"}])


def test_self_answers_single_and_all_labels():
    responses = [["Belmora", "belmora", "Belmora", "Oskel"], ["Vell"], ["salt."]]
    verdicts = [[True, True, True, False], [False], [True]]
    every = self_answers(ITEMS, responses, verdicts, seed=0, labels="all")
    assert every == [(0, " Belmora"), (0, " belmora"), (2, " salt.")]  # distinct correct answers; b never right
    single = self_answers(ITEMS, responses, verdicts, seed=0)
    assert [i for i, _ in single] == [0, 2] and single[0][1] in (" Belmora", " belmora")


class _Backend:
    """A sampler stand-in that records its call and answers each prompt with fixed texts."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def sample(self, prompts, n, temperature, max_new_tokens, seed, top_k=0, top_p=1.0, stop_at_line=False):
        self.calls.append((len(prompts), n, temperature, max_new_tokens, seed, top_k, top_p, stop_at_line))
        return [self.texts[i % len(self.texts)][:n] for i in range(len(prompts))]


def test_sample_and_judge_keeps_first_lines_and_verdicts():
    backend = _Backend([["Belmora\nQuestion: next", "The Belmora", "Oskel"]])
    sampling = losses.sma_sampling({"name": "dpo"}, freeform=True)
    assert sampling == {"num_samples": 8, "temperature": 1.4, "top_k": 50, "top_p": 0.9, "max_new_tokens": 32}
    recs = sample_and_judge(backend, ITEMS[:1], sampling, 3, make_verifier(None))
    assert backend.calls == [(1, 8, 1.4, 32, 3, 50, 0.9, True)]  # generative detection's sampler: stops at a line
    assert recs == [
        {
            "id": "a",
            "responses": ["Belmora", "The Belmora", "Oskel"],
            "verdicts": [True, True, False],  # exact: articles dropped (SQuAD normalisation)
            "n_correct": 2,
            "no_verdict": 0,
        }
    ]


def test_dpo_on_free_form_items_builds_response_pairs_and_sft_plus_dpo_adds_the_chosen_nll():
    recs = [
        {"id": "a", "responses": ["Belmora", "Oskel"], "verdicts": [True, False]},
        {"id": "b", "responses": ["Vell"], "verdicts": [False]},
        {"id": "c", "responses": [], "verdicts": []},
    ]
    loss = losses.make_loss({"name": "dpo"})
    pairs = loss.make_pairs(ITEMS, recs, 0, "general", None)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(" Belmora", " Oskel")]
    dd = losses.make_loss({"name": "dpo", "pairs": "dataset_dataset"})
    assert dd.sampling() is None and not dd.needs_detection_samples()
    assert len(dd.make_pairs(ITEMS, None, 0, "general", None)) == 3
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-2.0, -6.0], [-3.0, -1.0], [-2.5, -5.0], [-2.0, -2.0]))
    w, n = torch.tensor([1.0, 0.5]), torch.tensor([2, 3])
    plain, _ = loss.pair_loss(pc, pr, rc, rr, w, chosen_tokens=n)
    assert torch.allclose(plain, losses.dpo_loss(pc, pr, rc, rr, 0.1, w))
    joint, _ = losses.make_loss({"name": "dpo", "sft_weight": 0.5}).pair_loss(pc, pr, rc, rr, w, chosen_tokens=n)
    nll = (1.0 * 2.0 / 2 + 0.5 * 6.0 / 3) / 2  # per-token mean NLL of each chosen response, weighted, over P
    assert math.isclose(joint.item(), plain.item() + 0.5 * nll, rel_tol=1e-6)


def test_new_dpo_keys_stay_out_of_the_keys_at_their_defaults():
    old = {"name": "dpo", "dpo_beta": 0.1, "pairs": "self_self"}
    assert losses.key_config({**old, "sft_weight": 0.0, "response_tokens": 32}) == old
    assert losses.key_config({**old, "sft_weight": 0.5})["sft_weight"] == 0.5
    assert losses.key_config({"name": "nope", "sft_weight": 0.0}) == {"name": "nope", "sft_weight": 0.0}
    # the multiple-choice sampling settings (the dpo_samples key) are what they were
    assert losses.sma_sampling(old) == {
        "num_samples": 8,
        "temperature": 1.4,
        "top_k": 50,
        "top_p": 0.9,
        "max_new_tokens": 4,
    }


def test_free_form_pairs_train_on_every_response_token():
    from helpers.train import make_tokenizer

    from kaft import train

    tok = make_tokenizer()
    pairs = response_pairs(ITEMS, [[], [], ["pepper and salt", "salt"]], [[], [], [False, True]], 0, 8, "dataset_self")
    rows = train.build_pair_examples(tok, pairs, [1.0] * 3, 256)
    (r,) = rows
    n_c = sum(t != -100 for t in r["chosen_labels"])
    n_r = sum(t != -100 for t in r["rejected_labels"])
    assert n_c > 1 and n_r > 1 and not train.shares_sequence(r)  # whole responses, two sequences
    batch = train.PairCollator(tok.pad_token_id)(rows)
    assert batch["input_ids"].shape[0] == 2 and batch["rejected_row"].tolist() == [1]
