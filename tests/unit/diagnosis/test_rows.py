"""kaft.diagnosis.stage's pure parts: one item's row from its distributions, the summary by kind, the printed
line, the multiple-choice items of free-form training, and the export columns."""

import pytest

from kaft.diagnosis import columns, settings, stage
from kaft.diagnosis import signals as sig
from kaft.errors import ConfigError
from kaft.items import FreeFormItem, MCItem

S = settings.parse({"enabled": True})


def _item(answer=1, kind="contradict"):
    return MCItem(id="x", question="q ?", options=["a", "b", "c", "d"], answer=answer, meta={"kind": kind})


def test_row_of_a_learned_item_with_a_confident_wrong_base():
    dists = {
        "sft": [0.05, 0.9, 0.03, 0.02],
        "sft_t": [0.0, 1.0, 0.0, 0.0],  # every run answers B
        "base": [0.9, 0.05, 0.03, 0.02],
        "icl": [0.6, 0.3, 0.05, 0.05],
    }
    row = stage.item_row(3, _item(), dists, S, seed=0)
    assert row["runs"] == [1] * 5 and row["pass_rate"] == 1.0 and not row["unlearned"]
    assert row["bon_pred"] == 1 and row["bon_correct"] and row["train_correct"]
    assert (row["base_pred"], row["base_conf"], row["base_correct"]) == (0, 0.9, False)
    assert row["base_high_conf_error"]  # 0.9 > tau_c = 0.8 on a wrong answer
    assert row["js"] == pytest.approx(sig.js_divergence(dists["base"], dists["sft"]))
    # ranks ICL (1,2,3.5,3.5) vs tuned (2,1,3,4): Pearson of the ranks
    assert row["ren_consistency"] == pytest.approx(sig.pearson([1, 2, 3.5, 3.5], [2, 1, 3, 4]))
    assert row["ren_kl"] == pytest.approx(sig.kl_divergence(dists["sft"], dists["icl"]))
    assert (row["index"], row["kind"], row["gold"]) == (3, "contradict", 1)


def test_row_of_an_unlearned_item():
    dists = {k: [0.0, 0.0, 1.0, 0.0] for k in ("sft", "sft_t", "base", "icl")}
    row = stage.item_row(0, _item(answer=0, kind="unseen"), dists, S, seed=0)
    assert row["pass_rate"] == 0.0 and row["unlearned"] and row["bon_pred"] == 2 and not row["bon_correct"]
    assert row["ren_consistency"] is not None and row["js"] == pytest.approx(0.0)


def _rows(spec):
    return [
        {
            "kind": k,
            "unlearned": u,
            "train_correct": not u,
            "bon_correct": not u,
            "pass_rate": 0.0 if u else 1.0,
            "base_correct": True,
            "base_high_conf_error": False,
            "js": 0.1,
            "ren_consistency": None,
            "ren_kl": 0.5,
        }
        for k, u in spec
    ]


def test_summary_by_kind_by_hand():
    rows = _rows([("contradict", True), ("contradict", True), ("unseen", True), ("known", False), ("known", True)])
    out = stage.summarize(rows, S)
    assert out["unlearned"] == 4 and out["unlearned_rate"] == pytest.approx(0.8)
    assert out["unlearned_by_kind"] == {"contradict": 1.0, "known": 0.5, "unseen": 1.0}
    assert out["unlearned_share_by_kind"] == {"contradict": 0.5, "known": 0.25, "unseen": 0.25}
    assert out["train_accuracy"] == pytest.approx(0.2) and out["ren"] == {"consistency_mean": None, "kl_mean": 0.5}
    assert out["settings"]["tau"] == 0.5
    line = stage.headline(out)
    assert line.startswith("diagnosis: unlearned 0.800 (4/5)") and "contradict 1.00 (2/2)" in line
    assert "Ren consistency n/a" in line


def test_items_without_kinds_have_no_rates_by_kind():
    out = stage.summarize([{**r, "kind": None} for r in _rows([("x", True)])], S)
    assert out["unlearned_by_kind"] == {} and "by kind" not in stage.headline(out)


def test_free_form_training_is_diagnosed_on_its_converted_items():
    free = [FreeFormItem(id="f0", question="q ?", answer="a")]
    mc = _item()
    records = [{"id": "f0", "item": {**mc.to_dict(), "id": "f0"}}]
    assert stage.diagnosis_items(free, records)[0].options == mc.options
    assert stage.diagnosis_items(free, [{"id": "f0"}]) is None
    assert stage.diagnosis_items([mc], []) == [mc]


def test_export_columns():
    res = {"diagnosis": {"items": [{"id": "x", "pass_rate": 0.2, "unlearned": True, "ren_kl": 1.5}]}}
    got = columns.values(columns.by_id(res)["x"])
    assert (got["diag_pass_rate"], got["diag_unlearned"], got["ren_kl"], got["diag_js"]) == (0.2, True, 1.5, None)
    assert set(columns.values(None).values()) == {None} and columns.by_id({}) == {}


@pytest.mark.parametrize(
    "cfg, message",
    [({"tau": 1.5}, "diagnosis.tau"), ({"n_runs": 0}, "diagnosis.n_runs"), ({"n_run": 3}, "n_run")],
)
def test_bad_settings_are_one_line_errors(cfg, message):
    with pytest.raises(ConfigError, match=message) as e:
        settings.parse(cfg)
    assert "\n" not in str(e.value)


def test_cached_records_with_pass_at_n_are_read_as_any_correct(tmp_path):
    """The rename of detection's flag changed no detect key: a record cached before it reads under the new name."""
    from kaft.detection.core import read_records, write_records
    from kaft.job import score_stats

    write_records([{"id": "a", "score": 0.5, "pass_at_n": True}, {"id": "b", "score": 0.0, "any_correct": False}],
                  tmp_path / "scores.jsonl")  # fmt: skip
    records = read_records(tmp_path / "scores.jsonl")
    assert [r.get("any_correct") for r in records] == [True, False] and all("pass_at_n" not in r for r in records)
    items = [MCItem(id=i, question="q ?", options=["a", "b"], answer=0) for i in "ab"]
    stats = score_stats(records, items, [0, 1], ["low", "high"])
    assert stats["any_correct_rate"] == 0.5 and "pass_at_n_rate" not in stats
