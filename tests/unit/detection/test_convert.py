"""MC conversion (ILP): free-form items → multiple choice, deterministic, never a distractor equal to the reference."""

import pytest

from kaft import detection
from kaft.data import DataError
from kaft.detection import DetectionError, convert
from kaft.detection.convert import FreeFormItem, normalize_freeform, to_multiple_choice


def _items():
    rows = [
        {
            "id": f"f{i}",
            "question": f"What is the capital of Zorvia {i} ?",
            "answer": ans,
            "group": grp,
            "distractors": dis,
        }
        for i, (ans, grp, dis) in enumerate(
            [
                ("red", "color", ["Red ", "blue"]),
                ("green", "color", []),
                ("blue", "color", []),
                ("yellow", "color", ["cat"]),
                ("cat", "animal", []),
                ("dog", "animal", []),
                ("fox", "animal", []),
                ("owl", "animal", ["RED"]),
            ]
        )
    ]
    return normalize_freeform(rows, "t")


def test_no_distractor_equals_the_reference_and_gold_is_recorded():
    items = _items()
    mc = to_multiple_choice(items, 3, ["dataset", "group"], seed=0)
    for it, m in zip(items, mc):
        assert len(m.options) == 4 and m.options[m.answer] == it.answer
        others = [o for j, o in enumerate(m.options) if j != m.answer]
        assert all(convert._norm(o) != convert._norm(it.answer) for o in others)
        assert len({convert._norm(o) for o in m.options}) == 4
    assert mc[0].options.count("blue") == 1 and "Red" not in mc[0].options  # "Red " is the reference, not used
    assert mc[0].meta["distractor_sources"][0] == "dataset"


def test_conversion_is_deterministic_per_seed():
    items = _items()
    assert to_multiple_choice(items, 3, ["group"], 0) == to_multiple_choice(items, 3, ["group"], 0)
    assert any(
        a.options != b.options
        for a, b in zip(to_multiple_choice(items, 3, ["group"], 0), to_multiple_choice(items, 3, ["group"], 1))
    )


def test_not_enough_distractors_is_one_clear_error():
    with pytest.raises(DetectionError, match="only 1 distinct distractor.*lower detection.n_distractors"):
        to_multiple_choice(_items()[:1], 3, ["dataset"], 0)
    with pytest.raises(DetectionError, match="distractor_sources"):
        to_multiple_choice(_items(), 3, ["wikipedia"], 0)


def test_model_generated_distractors_are_used_and_cleaned():
    class Echo:
        def sample(self, prompts, n, temperature, max_new_tokens, seed):
            return [[" purple.", " red", "purple\nmore", " teal"] for _ in prompts]

    items = _items()[:2]
    gen = convert.generate_distractors(Echo(), items, 4, 4, 0)
    assert gen["f0"] == ["purple", "teal"]  # the reference "red" is never a distractor
    mc = to_multiple_choice(items, 2, ["model"], 0, gen)
    assert sorted(o for j, o in enumerate(mc[0].options) if j != mc[0].answer) == ["purple", "teal"]


def test_freeform_rows_are_validated():
    with pytest.raises(DataError, match="row 1: field 'answer'"):
        normalize_freeform([{"id": "a", "question": "q?"}], "src")
    with pytest.raises(DataError, match="duplicate id"):
        normalize_freeform([{"id": "a", "question": "q", "answer": "x"}] * 2, "src")
    mc_row = {"id": "m", "question": "q", "options": ["x", "y"], "answer": 1, "meta": {"relation": "r"}}
    assert normalize_freeform([mc_row], "s")[0] == FreeFormItem("m", "q", "y", (), "r")


def test_mc_conversion_scores_converted_items(tiny_model, tiny_tokenizer):
    b = detection.HFBackend(tiny_model, tiny_tokenizer, batch_size=8)
    cfg = {
        "num_orders": 2,
        "num_samples": 3,
        "shots": 2,
        "max_new_tokens": 1,
        "n_distractors": 3,
        "distractor_sources": ["group", "dataset"],
    }
    recs = detection.run_detection(b, _items(), {**cfg, "name": "mc_conversion"}, 0, "geography", progress=False)
    assert [r["id"] for r in recs] == [f"f{i}" for i in range(8)]
    for r in recs:
        assert r["item"]["answer"] == r["gold"] and len(r["item"]["options"]) == 4
        assert "any_correct" in r and "high_conf_error" in r
