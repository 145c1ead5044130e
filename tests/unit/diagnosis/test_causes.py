"""ILP's five causes (kaft.diagnosis.causes): each rule on synthetic per-item rows in the diagnosis row format
(docs/diagnosis.md), the walk's order (first match wins), the settings' one-line errors, and precision / recall."""

from __future__ import annotations

import pytest

from kaft.diagnosis import causes as C
from kaft.errors import ConfigError
from kaft.items import FreeFormItem, MCItem


def row(**kw):
    base = {"unlearned": True, "base_correct": True, "base_high_conf_error": False, "js": 0.2, "pass_rate": 0.2}
    return {**base, **kw}


def mc(i, q=None, gold=0, stage=None):
    meta = {} if stage is None else {"stage": stage}
    return MCItem(id=f"i{i}", question=q or f"What is the capital of Land{i}?", options=["a", "b", "c", "d"],
                  answer=gold, meta=meta)  # fmt: skip


def walk(rows, items=None, **settings):
    items = items or [mc(i) for i in range(len(rows))]
    return C.attribute(rows, items, settings)


def test_missing_knowledge_is_a_wrong_base_without_confidence():
    out = walk([row(base_correct=False), row(base_correct=False, base_high_conf_error=True), row()])
    assert out["per_item"][0] == "missing_knowledge"
    assert out["per_item"][1] == "pretraining_conflict"  # a confident wrong base holds a belief, not a blank
    assert out["per_item"][2] == "insufficient_optimisation"


def test_pretraining_conflict_is_the_high_confidence_error():
    assert walk([row(base_correct=False, base_high_conf_error=True)])["per_item"] == ["pretraining_conflict"]
    # order=[conflict first]: the rule itself does not read K(x)
    out = walk([row(base_high_conf_error=True)], order=["pretraining_conflict"])
    assert out["per_item"] == ["pretraining_conflict"]


def test_internal_conflict_needs_a_similar_question_with_another_gold():
    q = "What is the capital of Zorvia?"
    items = [mc(0, q, 0), mc(1, q, 2), mc(2, "What is the capital of Belmora?", 1), mc(3, q + " ", 0)]
    out = walk([row(), row(unlearned=False), row(), row()], items)
    # 0 and 3 share the question with 1, whose gold differs; 2 has no twin; 3 and 0 share a gold (not a conflict)
    assert out["per_item"] == ["internal_conflict", None, "insufficient_optimisation", "internal_conflict"]
    same_gold = walk([row(), row()], [mc(0, q, 1), mc(1, q, 1)])
    assert same_gold["per_item"] == ["insufficient_optimisation"] * 2


def test_internal_conflict_compares_free_form_reference_texts():
    items = [FreeFormItem("a", "Who wrote it?", "Ann"), FreeFormItem("b", "who wrote it?", "Bob"),
             FreeFormItem("c", "Who wrote it?", "ann")]  # fmt: skip
    out = walk([row(), row(), row()], items, similarity="exact")
    assert out["per_item"] == ["internal_conflict"] * 3


def test_forgetting_only_in_sequential_training():
    rows = [row(), row(), row()]
    flat = walk(rows)
    assert "forgetting" in flat["not_applicable"] and "not sequential" in flat["not_applicable"]["forgetting"]
    seq = walk(rows, [mc(0, stage=0), mc(1, stage=1), mc(2, stage=0)])
    assert seq["not_applicable"] == {}
    assert seq["per_item"] == ["forgetting", "insufficient_optimisation", "forgetting"]


def test_insufficient_optimisation_with_a_js_bound():
    rows = [row(js=0.01), row(js=0.5), row(js=None)]
    assert walk(rows)["per_item"] == ["insufficient_optimisation"] * 3
    bounded = walk(rows, insufficient_js_max=0.1)
    assert bounded["per_item"] == ["insufficient_optimisation", "unattributed", "unattributed"]
    assert bounded["counts"]["unattributed"] == 2


def test_order_first_match_wins_and_counts():
    q = "What is the capital of Zorvia?"
    items = [mc(0, q, 0, stage=0), mc(1, q, 1, stage=1), mc(2, stage=0), mc(3, stage=1), mc(4, stage=1)]
    rows = [
        row(base_correct=False),  # missing knowledge, also internal conflict and forgetting: the first wins
        row(base_correct=False, base_high_conf_error=True),  # conflict before internal conflict
        row(),  # forgetting (stage 0 < 1)
        row(),  # insufficient
        row(unlearned=False, base_correct=False),  # learned: not walked
    ]
    out = C.attribute(rows, items, None)
    assert out["per_item"] == ["missing_knowledge", "pretraining_conflict", "forgetting", "insufficient_optimisation",
                               None]  # fmt: skip
    assert out["counts"] == {"missing_knowledge": 1, "pretraining_conflict": 1, "internal_conflict": 0,
                             "forgetting": 1, "insufficient_optimisation": 1, "unattributed": 0}  # fmt: skip
    assert out["unlearned"] == 4 and out["proportions"]["forgetting"] == 0.25
    assert out["order"] == list(C.ILP_ORDER)
    reordered = C.attribute(rows, items, {"order": ["internal_conflict", "missing_knowledge"]})
    assert reordered["per_item"][:3] == ["internal_conflict", "internal_conflict", "unattributed"]


def test_unknown_signals_never_match():
    out = walk([row(base_correct=None, base_high_conf_error=None), row(unlearned=None)])
    assert out["per_item"] == ["insufficient_optimisation", None]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"order": ["missing_knowledge", "nope"]}, "unknown cause 'nope'"),
        ({"order": ["forgetting", "forgetting"]}, "names a cause twice"),
        ({"order": []}, "non-empty list"),
        ({"similarity": "bm25"}, "diagnosis.causes.similarity must be one of"),
        ({"similarity_threshold": 1.5}, "diagnosis.causes.similarity_threshold must be in [0, 1]"),
        ({"treshold": 0.5}, "diagnosis.causes"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=None) as e:
        C.parse_settings(settings)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_rows_and_items_must_align():
    with pytest.raises(ValueError, match="one row per training item"):
        C.attribute([row()], [], None)


def test_precision_recall_on_a_constructed_case():
    per_item = ["missing_knowledge", "missing_knowledge", "pretraining_conflict", None, "unattributed", "forgetting"]
    planted = ["missing_knowledge", "pretraining_conflict", "pretraining_conflict", "missing_knowledge",
               "pretraining_conflict", None]  # fmt: skip
    pr = C.precision_recall(per_item, planted)
    assert pr["missing_knowledge"] == {"precision": 0.5, "recall": 1.0, "hits": 1, "attributed": 2, "planted": 1}
    # item 3 was learned (None): not in the recall's denominator; item 4 unattributed counts as a miss
    assert pr["pretraining_conflict"] == {"precision": 1.0, "recall": 1 / 3, "hits": 1, "attributed": 1, "planted": 3}
    assert pr["forgetting"]["precision"] == 0.0 and pr["forgetting"]["recall"] is None
    assert pr["internal_conflict"] == {"precision": None, "recall": None, "hits": 0, "attributed": 0, "planted": 0}
    with pytest.raises(ValueError):
        C.precision_recall(per_item, planted[:2])


def test_every_cause_is_registered_and_documented():
    for name in C.ILP_ORDER:
        cls = C.CAUSES.get(name)
        assert cls.name == name and cls.title and cls.paper.startswith("ILP") and cls.__doc__


def test_causes_block_without_ground_truth_holds_counts_and_settings():
    rows = [row(base_correct=False), row(unlearned=False)]
    out = C.causes_block(rows, [mc(0), mc(1)])
    assert out["per_item"] == ["missing_knowledge", None]
    block = out["block"]
    assert block["counts"]["missing_knowledge"] == 1 and block["unlearned"] == 1
    assert block["settings"]["similarity"] == "tfidf" and "precision_recall" not in block
