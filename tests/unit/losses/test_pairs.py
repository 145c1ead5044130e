"""kaft.losses.pairs: preference pairs from sampled answers (dataset_self, self_self, SMA's down-sampling)."""

from __future__ import annotations

import pytest


# ----------------------------------------------------------------------------------------------- pairs
def _items_and_records():
    from kaft.data import MCItem

    items = [MCItem(f"q{i}", f"question {i} ?", ["w", "x", "y", "z"], i % 4, domain="geography") for i in range(4)]
    records = [
        # q0 (gold 0): wrong answers 2 (x3), 1 (x1), 3 (x3), unparsable ignored; right twice
        {
            "id": "q0",
            "score": 0.2,
            "gold": 0,
            "orders": [[0, 1, 2, 3], [1, 0, 3, 2]],
            "answers": [[2, 2, 1, 0, -1], [3, 3, 3, 2, 0]],
        },
        # q1 (gold 1): always right -> no pairs
        {"id": "q1", "score": 1.0, "gold": 1, "orders": [[0, 1, 2, 3]], "answers": [[1, 1, 1]]},
        # q2 (gold 2): never right, one wrong option -> a pair under dataset_self only
        {"id": "q2", "score": 0.0, "gold": 2, "orders": [[0, 1, 2, 3]], "answers": [[0, 0, -1]]},
        # q3: no samples saved (exact estimator) -> no pairs
        {"id": "q3", "score": 0.7, "gold": 3, "orders": [[0, 1, 2, 3]], "probs": [[0.1, 0.1, 0.1, 0.7]]},
    ]
    return items, records


def test_build_pairs_dataset_self():
    from kaft.losses.pairs import build_pairs
    from kaft.prompts import answer_text, format_question

    items, records = _items_and_records()
    pairs = build_pairs(items, records, "dataset_self", 8, seed=0)
    assert [(p["id"], p["chosen_option"], p["rejected_option"], p["count"]) for p in pairs][:1] in (
        [("q0", 0, 2, 3)],
        [("q0", 0, 3, 3)],
    )  # 2 and 3 were each named 3 times: a seeded tie-break
    assert sorted((p["id"], p["rejected_option"]) for p in pairs) == [("q0", 1), ("q0", 2), ("q0", 3), ("q2", 0)]
    assert [p["rejected_option"] for p in pairs if p["id"] == "q0"][-1] == 1  # the rarest wrong option last
    p = next(p for p in pairs if p["id"] == "q2")
    assert p["index"] == 2 and p["chosen"] == answer_text(2) == " C" and p["rejected"] == " A"
    assert p["prompt"] == format_question("question 2 ?", ["w", "x", "y", "z"], "geography")  # original order


def test_build_pairs_self_self_needs_a_correct_sample():
    from kaft.losses.pairs import build_pairs

    items, records = _items_and_records()
    pairs = build_pairs(items, records, "self_self", 8, seed=0)
    assert {p["id"] for p in pairs} == {"q0"} and len(pairs) == 3
    assert all(p["chosen_option"] == 0 for p in pairs)


def test_build_pairs_cap_and_determinism():
    from kaft.losses.pairs import build_pairs

    items, records = _items_and_records()
    capped = build_pairs(items, records, "dataset_self", 1, seed=0)
    assert [(p["id"], p["count"]) for p in capped] == [("q0", 3), ("q2", 2)]  # the most frequent wrong option
    assert build_pairs(items, records, "dataset_self", 1, seed=0) == capped
    firsts = {build_pairs(items, records, "dataset_self", 1, seed=s)[0]["rejected_option"] for s in range(16)}
    assert firsts == {2, 3}  # the seed only breaks the tie
    # an item's pairs do not depend on the other items
    alone = build_pairs(items[:1], records[:1], "dataset_self", 8, seed=0)
    assert alone == [p for p in build_pairs(items, records, "dataset_self", 8, seed=0) if p["id"] == "q0"]


def test_sma_pairs_are_correct_times_incorrect_down_sampled():
    """SMA §3: pairs = correct count × incorrect count per question, randomly down-sampled to at most m."""
    from kaft.data import MCItem
    from kaft.losses.pairs import build_pairs

    items = [MCItem(f"s{j}", f"question {j} ?", ["w", "x", "y", "z"], 0, domain="geography") for j in range(3)]
    records = [
        {"id": "s0", "gold": 0, "answers": [[0, 0, 1, 1, 1, 2, -1, 0]]},  # 3 correct x 4 incorrect = 12
        {"id": "s1", "gold": 0, "answers": [[0, 3, -1, -1, -1, -1, -1, -1]]},  # 1 x 1
        {"id": "s2", "gold": 0, "answers": [[1, 1, 2, 2, 3, 3, 1, 1]]},
    ]  # never right
    full = build_pairs(items, records, "self_self", 100, 0, source="sma")
    s0 = [(p["chosen_option"], p["rejected_option"]) for p in full if p["id"] == "s0"]
    assert s0 == [(0, r) for _ in range(3) for r in (1, 1, 1, 2)] and [p["id"] for p in full].count("s1") == 1
    capped = build_pairs(items, records, "self_self", 8, 0, source="sma")
    kept = [p for p in capped if p["id"] == "s0"]
    assert len(kept) == 8 and all(p["count"] == (3 if p["rejected_option"] == 1 else 1) for p in kept)
    # a wrong answer sampled often gives more pairs: over seeds, option 1 (3 of 4 incorrect) has ~3/4 of them
    share = [
        sum(p["rejected_option"] == 1 for p in build_pairs(items[:1], records[:1], "self_self", 4, s, source="sma")) / 4
        for s in range(200)
    ]
    assert abs(sum(share) / len(share) - 0.75) < 0.05
    assert build_pairs(items, records, "self_self", 8, 0, source="sma") == capped  # seeded
    # dataset_self: the reference answer x each incorrect sample, so items never answered right count too
    ds = build_pairs(items, records, "dataset_self", 8, 0, source="sma")
    assert [p["id"] for p in ds].count("s0") == 4 and [p["id"] for p in ds].count("s2") == 8
    with pytest.raises(ValueError, match="unknown source"):
        build_pairs(items, records, "self_self", 8, 0, source="both")


def test_build_pairs_none_without_wrong_samples_and_input_checks():
    from kaft.losses.pairs import build_pairs

    items, records = _items_and_records()
    assert build_pairs(items[1:2], records[1:2], "dataset_self", 8, 0) == []
    assert build_pairs(items[3:], records[3:], "dataset_self", 8, 0) == []
    with pytest.raises(ValueError, match="4 items but 3 detection records"):
        build_pairs(items, records[:3], "dataset_self", 8, 0)
    with pytest.raises(ValueError, match="record 0 is for item 'q1'"):
        build_pairs(items[:1], records[1:2], "dataset_self", 8, 0)
    with pytest.raises(ValueError, match="unknown mode"):
        build_pairs(items, records, "self_other", 8, 0)
    with pytest.raises(ValueError, match="max_pairs"):
        build_pairs(items, records, "dataset_self", 0, 0)
    bad = [dict(records[0], answers=[[7]])]
    with pytest.raises(ValueError, match="names option 7"):
        build_pairs(items[:1], bad, "dataset_self", 8, 0)
