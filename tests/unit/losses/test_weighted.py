"""kaft.losses.weighted: the per-sample rewards of KaFT, constant and auto-adapt, against the paper's closed forms."""

from __future__ import annotations

import pytest
import torch
from helpers.losses import CONSTANT, KAFT, ragged_batch

from kaft.losses import compute_loss, sample_weights


# ----------------------------------------------------------------------------------------------- sample weights
def test_kaft_alpha_beta_one_equals_constant():
    logits, labels = ragged_batch()
    cfg = {"name": "kaft", "alpha": 1.0, "beta": 1.0}
    w = sample_weights(cfg, [0, 1, 3], [0.0, 0.3, 1.0], 4)
    assert w == [1.0, 1.0, 1.0]
    assert torch.allclose(compute_loss(cfg, logits, labels, w), compute_loss(CONSTANT, logits, labels, [1, 1, 1]))


def test_kaft_weights_by_subset_k4():
    w = sample_weights(KAFT, [0, 1, 2, 3, 1, 0], [0.1] * 6, 4)
    assert w == pytest.approx([0.1, 0.5, 1.0, 1.0, 0.5, 0.1])
    w = sample_weights({"name": "kaft", "alpha": 0.2, "beta": 0.7}, [3, 2, 1, 0], [0.5] * 4, 4)
    assert w == pytest.approx([1.0, 1.0, 0.7, 0.2])


def test_kaft_rewards_override_and_other_k():
    w = sample_weights({**KAFT, "rewards": [0.0, 0.25, 0.75, 1.0]}, [0, 1, 2, 3], [0.5] * 4, 4)
    assert w == pytest.approx([0.0, 0.25, 0.75, 1.0])
    w = sample_weights({"name": "kaft", "rewards": [0.3, 0.6, 1.0]}, [2, 0, 1], [0.5] * 3, 3)
    assert w == pytest.approx([1.0, 0.3, 0.6])


def test_auto_adapt_weights_are_scores():
    scores = [0.0, 0.25, 0.5, 0.8, 1.0]
    assert sample_weights({"name": "auto_adapt"}, [0, 0, 1, 2, 3], scores, 4) == scores
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        sample_weights({"name": "auto_adapt"}, [0], [1.2], 4)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        sample_weights({"name": "auto_adapt"}, [0], [float("nan")], 4)


def test_constant_and_eaft_sample_weights_are_one():
    assert sample_weights(CONSTANT, [0, 3], [0.1, 0.9], 4) == [1.0, 1.0]
    assert sample_weights({"name": "eaft", "eaft_alpha": 1.0, "top_k": 20}, [0, 3], [0.1, 0.9], 4) == [1.0, 1.0]
