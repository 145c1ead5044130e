"""kaft.losses.preference: the DPO loss in closed form, sequence log-probs, and the dpo config (SMA's settings)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers.losses import KAFT

from kaft import losses
from kaft.losses import LOSSES, compute_loss, sample_weights, validate_loss_cfg


# ----------------------------------------------------------------------------------------------- dpo
def test_dpo_loss_is_closed_form():
    pc, pr = torch.tensor([-1.0, -0.2, -3.0]), torch.tensor([-2.5, -0.1, -1.0])
    rc, rr = torch.tensor([-1.5, -0.3, -2.0]), torch.tensor([-2.0, -0.4, -1.5])
    beta = 0.1
    by_hand = []
    for i in range(3):
        delta = (pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item())
        by_hand.append(-math.log(1.0 / (1.0 + math.exp(-beta * delta))))
    assert losses.dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    w = torch.tensor([0.1, 0.5, 1.0])
    assert losses.dpo_loss(pc, pr, rc, rr, beta, w).item() == pytest.approx(
        (0.1 * by_hand[0] + 0.5 * by_hand[1] + by_hand[2]) / 3, rel=1e-6
    )
    # policy = reference: ln 2 whatever beta
    assert losses.dpo_loss(rc, rr, rc, rr, 5.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_sequence_logps_sums_label_log_probs_and_shares_rows():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 5, 12, generator=g)
    chosen = torch.full((2, 5), -100)
    chosen[0, 3:5] = torch.tensor([4, 7])
    chosen[1, 4] = 2
    rejected = chosen.clone()
    rejected[1, 4] = 9  # pair 1: rejected read from the same row as chosen
    lsm = torch.log_softmax(logits, -1)
    want_c = torch.tensor([lsm[0, 2, 4] + lsm[0, 3, 7], lsm[1, 3, 2]])
    want_r = torch.tensor([lsm[1, 2, 4] + lsm[1, 3, 7], lsm[1, 3, 9]])
    assert torch.allclose(losses.sequence_logps(logits, chosen), want_c, atol=1e-6)
    got_r = losses.sequence_logps(logits, rejected, rows=torch.tensor([1, 1]))  # pair 0's rejected in row 1
    assert torch.allclose(got_r, want_r, atol=1e-6)
    shifted = losses.sequence_logps(logits[:, :-1], chosen[:, 1:], labels_shifted=True)
    assert torch.allclose(shifted, want_c, atol=1e-6)


def test_dpo_config_and_needs_samples():
    cfg = {
        "name": "dpo",
        "dpo_beta": 0.1,
        "pairs": "self_self",
        "max_pairs": 3,
        "weight_by_subset": True,
        "alpha": 0.2,
        "beta": 0.6,
        "rewards": None,
    }
    validate_loss_cfg(cfg, 4)
    # SMA's pairs come from its own samples; only pair_source=detection needs the probe's
    assert not losses.needs_samples(cfg) and losses.is_pairwise(cfg)
    assert losses.needs_samples({**cfg, "pair_source": "detection"}) and not losses.needs_samples(KAFT)
    assert [n for n in LOSSES.names() if losses.is_pairwise({"name": n})] == ["dpo"]
    assert sample_weights(cfg, [0, 1, 2], [0.1, 0.4, 0.9], 4) == pytest.approx([0.2, 0.6, 1.0])
    assert sample_weights({**cfg, "weight_by_subset": False}, [0, 1], [0.1, 0.4], 4) == [1.0, 1.0]
    # SMA §4.1 (Qwen2): n = 8, top-k 50, top-p 0.9, temperature 1.4; m = 8 pairs; self-self pairs
    assert dataclasses.asdict(losses.make_loss({"name": "dpo"}).s) == {
        "dpo_beta": 0.1,
        "pairs": "self_self",
        "pair_source": "sma",
        "max_pairs": 8,
        "weight_by_subset": False,
        "num_samples": 8,
        "temperature": 1.4,
        "top_k": 50,
        "top_p": 0.9,
        "max_new_tokens": 4,
        "response_tokens": 32,
        "sft_weight": 0.0,
        "alpha": 0.1,
        "beta": 0.5,
        "rewards": None,
    }
    assert losses.sma_sampling(cfg) == {
        "num_samples": 8,
        "temperature": 1.4,
        "top_k": 50,
        "top_p": 0.9,
        "max_new_tokens": 4,
    }
    assert losses.sma_sampling({**cfg, "pair_source": "detection"}) is None and losses.sma_sampling(KAFT) is None
    for bad, match in (
        ({"pair_source": "both"}, "'pair_source' must be one of"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temperature": 0}, "temperature"),
        ({"num_samples": 0}, "num_samp"),
    ):
        with pytest.raises(ValueError, match=match):
            validate_loss_cfg({**cfg, **bad}, 4)
    with pytest.raises(ValueError, match="preference pairs"):
        compute_loss(cfg, torch.zeros(1, 3, 10), torch.tensor([[-100, 1, 2]]), [1.0])
