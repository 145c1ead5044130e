"""results.json's detection block gives the high-confidence error rate per subset (issue 24: how much of the wrong
subset the base model confidently contradicts rather than is unsure of, readable on any data set)."""

import math

from kaft.items import MCItem
from kaft.job import score_stats


def test_high_confidence_errors_are_counted_per_subset():
    items = [MCItem(id=str(i), question="q", options=["a", "b"], answer=0) for i in range(4)]
    records = [{"score": s, "high_conf_error": e} for s, e in ((0.0, True), (0.1, False), (0.9, False), (1.0, False))]
    out = score_stats(records, items, [0, 0, 1, 1], ["wrong", "right"])
    assert out["high_conf_error_by_subset"] == {"wrong": 0.5, "right": 0.0} and out["high_conf_error_rate"] == 0.25
    empty = score_stats(records, items, [0, 0, 0, 0], ["wrong", "right"])["high_conf_error_by_subset"]
    assert empty["wrong"] == 0.25 and math.isnan(empty["right"])
    assert "high_conf_error_by_subset" not in score_stats([{"score": 0.5}] * 4, items, [0, 0, 1, 1], ["w", "r"])
