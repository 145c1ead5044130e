"""The results contract: what a finished job leaves behind, and the metrics shared by everything that reads it."""

from __future__ import annotations

from typing import Sequence

RESULTS_FILE = "results.json"  # a job's results, in its run directory


def auroc(pos_scores: Sequence[float], neg_scores: Sequence[float]) -> float:
    """P(score of a random negative > score of a random positive) with ties counted half: how well a LOW score
    flags the positives (e.g. contradicting items). NaN when either side is empty."""
    if not pos_scores or not neg_scores:
        return float("nan")
    wins = sum((n > p) + 0.5 * (n == p) for p in pos_scores for n in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))
