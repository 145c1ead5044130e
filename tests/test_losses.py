"""Analytic checks of kaft.losses: each compares against an independent formula and can fail."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kaft import losses
from kaft.losses import LOSSES, compute_loss, register, sample_weights, validate_loss_cfg

CONSTANT = {"name": "constant"}
KAFT = {"name": "kaft", "alpha": 0.1, "beta": 0.5, "rewards": None}


def _one_label_batch(b=5, t=7, v=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.full((b, t), -100)
    pos = torch.randint(1, t, (b,), generator=g)
    tok = torch.randint(0, v, (b,), generator=g)
    labels[torch.arange(b), pos] = tok
    return logits, labels, pos, tok


def _ragged_batch(seed=1, v=30):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 8, v, generator=g) * 2
    labels = torch.full((3, 8), -100)
    labels[0, 7] = 3                                   # 1 label token
    labels[1, 4:8] = torch.tensor([1, 2, 3, 4])        # 4 label tokens
    labels[2, 2:4] = torch.tensor([5, 6])              # 2 label tokens
    return logits, labels


# ----------------------------------------------------------------------------------------------- weighted CE
def test_constant_equals_token_mean_ce_with_one_label_per_sample():
    logits, labels, pos, tok = _one_label_batch()
    ref = F.cross_entropy(logits[torch.arange(5), pos - 1], tok)  # HF shift: position t-1 predicts label t
    got = compute_loss(CONSTANT, logits, labels, torch.ones(5))
    assert torch.allclose(got, ref, atol=1e-6)
    # and the HF causal-LM reference (shift inside, token mean) agrees
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 30), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(got, hf, atol=1e-6)


def test_constant_is_mean_of_per_sample_means_with_ragged_labels():
    logits, labels = _ragged_batch()
    per_tok = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    mask = labels[:, 1:] != -100
    per_sample = (per_tok * mask).sum(1) / mask.sum(1)
    got = compute_loss(CONSTANT, logits, labels, [1.0, 1.0, 1.0])
    assert torch.allclose(got, per_sample.mean(), atol=1e-6)
    token_mean = per_tok[mask].mean()
    assert not torch.allclose(got, token_mean, atol=1e-3)  # the documented choice really differs here


def test_weighted_ce_is_sum_of_weighted_sample_means_over_batch_size():
    logits, labels = _ragged_batch()
    per_tok = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    mask = labels[:, 1:] != -100
    per_sample = (per_tok * mask).sum(1) / mask.sum(1)
    w = torch.tensor([0.1, 0.5, 1.0])
    got = compute_loss(KAFT, logits, labels, w)
    assert torch.allclose(got, (w * per_sample).sum() / 3, atol=1e-6)
    # an all-"wrong" batch is scaled by alpha, not renormalised away
    all_low = compute_loss(KAFT, logits, labels, [0.1, 0.1, 0.1])
    assert torch.allclose(all_low, 0.1 * compute_loss(CONSTANT, logits, labels, [1, 1, 1]), atol=1e-6)


def test_labels_shifted_flag_matches_unshifted_convention():
    logits, labels = _ragged_batch()
    a = compute_loss(CONSTANT, logits, labels, [1, 2, 3])
    b = compute_loss(CONSTANT, logits[:, :-1], labels[:, 1:], [1, 2, 3], labels_shifted=True)
    assert torch.allclose(a, b, atol=1e-7)


def test_zero_weight_sample_has_zero_gradient():
    logits, labels = _ragged_batch()
    logits.requires_grad_(True)
    compute_loss(KAFT, logits, labels, [0.0, 1.0, 1.0]).backward()
    assert torch.count_nonzero(logits.grad[0]) == 0
    assert torch.count_nonzero(logits.grad[1]) > 0


def test_no_label_tokens_gives_zero_loss_that_backprops():
    logits = torch.randn(2, 4, 10, requires_grad=True)
    loss = compute_loss(CONSTANT, logits, torch.full((2, 4), -100), [1, 1])
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_bf16_logits_give_float32_loss_close_to_fp32():
    logits, labels = _ragged_batch()
    lb = logits.to(torch.bfloat16)
    got = compute_loss({"name": "eaft"}, lb, labels, [1, 1, 1])
    ref = compute_loss({"name": "eaft"}, lb.float(), labels, [1, 1, 1])
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-6)


# ----------------------------------------------------------------------------------------------- sample weights
def test_kaft_alpha_beta_one_equals_constant():
    logits, labels = _ragged_batch()
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


@pytest.mark.parametrize("cfg,k,match", [
    ({**KAFT, "rewards": [0.1, 0.5, 1.0]}, 4, "3 entries.*K=4"),
    ({"name": "kaft", "alpha": 0.1, "beta": 0.5}, 3, "K=3.*rewards"),
    ({"name": "kaft", "alpha": 1.5, "beta": 0.5}, 4, "alpha.*\\[0, 1\\]"),
    ({"name": "kaft", "alpha": 0.1, "beta": -0.1}, 4, "beta"),
    ({"name": "kaft", "rewards": [0.1, -1, 1, 1]}, 4, "rewards\\[1\\]"),
    ({"name": "kaft", "alhpa": 0.1}, 4, "unknown key.*alhpa"),
    ({"name": "eaft", "alpha": 1.0, "k": 1}, 4, "'k'"),
    ({"name": "eaft", "alpha": -1.0}, 4, "alpha"),
    ({"name": "focal"}, 4, "unknown loss 'focal'.*auto_adapt.*constant.*eaft.*kaft"),
    ({}, 4, "unknown loss None"),
])
def test_impossible_configs_raise(cfg, k, match):
    with pytest.raises(ValueError, match=match):
        validate_loss_cfg(cfg, k)
    with pytest.raises(ValueError, match=match):
        sample_weights(cfg, [0], [0.5], k)


def test_valid_configs_pass():
    for cfg in (CONSTANT, KAFT, {"name": "auto_adapt"}, {"name": "eaft", "alpha": 1.0, "k": 20}):
        validate_loss_cfg(cfg, 4)


def test_sample_weights_input_checks():
    with pytest.raises(ValueError, match="subset 4"):
        sample_weights(CONSTANT, [4], [0.5], 4)
    with pytest.raises(ValueError, match="2 subsets but 1 scores"):
        sample_weights(CONSTANT, [0, 1], [0.5], 4)


def test_auto_adapt_weights_are_scores():
    scores = [0.0, 0.25, 0.5, 0.8, 1.0]
    assert sample_weights({"name": "auto_adapt"}, [0, 0, 1, 2, 3], scores, 4) == scores
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        sample_weights({"name": "auto_adapt"}, [0], [1.2], 4)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        sample_weights({"name": "auto_adapt"}, [0], [float("nan")], 4)


def test_constant_and_eaft_sample_weights_are_one():
    assert sample_weights(CONSTANT, [0, 3], [0.1, 0.9], 4) == [1.0, 1.0]
    assert sample_weights({"name": "eaft", "alpha": 1.0, "k": 20}, [0, 3], [0.1, 0.9], 4) == [1.0, 1.0]


# ----------------------------------------------------------------------------------------------- eaft
@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_eaft_weight_on_uniform_logits(alpha):
    logits = torch.zeros(3, 50)
    w = losses.eaft_token_weights(logits, alpha=alpha, k=20)
    assert torch.allclose(w, torch.full((3,), (math.log(20) / 3.0) ** alpha), atol=1e-6)
    # the loss on uniform logits: every token has CE ln(V) and weight (ln20/3)^alpha
    labels = torch.full((1, 4), -100)
    labels[0, 2:] = torch.tensor([7, 9])
    got = compute_loss({"name": "eaft", "alpha": alpha, "k": 20}, torch.zeros(1, 4, 50), labels, [1.0])
    assert got.item() == pytest.approx((math.log(20) / 3.0) ** alpha * math.log(50), rel=1e-6)


def test_eaft_weight_on_peaked_logits_is_small():
    logits = torch.zeros(1, 50)
    logits[0, 3] = 30.0
    assert losses.eaft_token_weights(logits, 1.0, 20).item() < 1e-6


def _eaft_reference(logits, labels, alpha=1.0, k=20):
    """LLaMA-Factory's eaft_loss_func, written out independently (flatten, shift, top-k entropy, / #tokens)."""
    v = logits.size(-1)
    shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    flat = logits.float().reshape(-1, v)
    ce = F.cross_entropy(flat, shift_labels, ignore_index=-100, reduction="none")
    valid = shift_labels != -100
    src = flat[valid].detach()
    top = torch.topk(src, k=k, dim=-1).values
    p = torch.softmax(top, dim=-1)
    h = -(p * torch.log(p)).sum(-1)
    w = (h / 3.0) ** alpha
    return (ce[valid] * w).sum() / valid.sum(), w


@pytest.mark.parametrize("alpha,k", [(1.0, 20), (0.5, 20), (2.0, 10)])
def test_eaft_matches_reference_formula(alpha, k):
    logits, labels = _ragged_batch(seed=3, v=64)
    logits = logits * 1.5
    ref, _ = _eaft_reference(logits, labels, alpha, k)
    got = compute_loss({"name": "eaft", "alpha": alpha, "k": k}, logits, labels, [1.0, 1.0, 1.0])
    assert abs(got.item() - ref.item()) < 1e-6
    assert abs(got.item() - compute_loss(CONSTANT, logits, labels, [1, 1, 1]).item()) > 1e-3


def test_eaft_no_gradient_through_weight():
    logits, labels = _ragged_batch(seed=4, v=64)
    x1 = logits.clone().requires_grad_(True)
    compute_loss({"name": "eaft", "alpha": 1.0, "k": 20}, x1, labels, [1, 1, 1]).backward()
    # reference: the same weights as constants, gradient only through the CE
    _, w = _eaft_reference(logits, labels)
    x2 = logits.clone().requires_grad_(True)
    flat_labels = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    ce = F.cross_entropy(x2.reshape(-1, 64), flat_labels, ignore_index=-100, reduction="none")
    valid = flat_labels != -100
    ((ce[valid] * w).sum() / valid.sum()).backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    # and a version that lets the gradient flow through the weight is measurably different
    x3 = logits.clone().requires_grad_(True)
    flat = x3.reshape(-1, 64)[valid]
    p = torch.softmax(torch.topk(flat, 20, dim=-1).values, -1)
    w3 = -(p * p.log()).sum(-1) / 3.0
    ce3 = F.cross_entropy(flat, flat_labels[valid], reduction="none")
    ((ce3 * w3).sum() / valid.sum()).backward()
    assert not torch.allclose(x1.grad, x3.grad, atol=1e-4)


def test_eaft_k_larger_than_vocab_is_clear():
    with pytest.raises(ValueError, match="k=20 exceeds the vocabulary size 10"):
        compute_loss({"name": "eaft"}, torch.zeros(1, 3, 10), torch.tensor([[-100, 1, 2]]), [1.0])


# ----------------------------------------------------------------------------------------------- registry
def test_register_adds_a_loss_and_rejects_duplicates():
    @register("_test_half")
    class Half(losses.Loss):
        @classmethod
        def weights(cls, cfg, subsets, scores, k):
            return [0.5] * len(subsets)

    try:
        assert LOSSES["_test_half"] is Half
        assert sample_weights({"name": "_test_half"}, [0, 1], [0, 0], 2) == [0.5, 0.5]
        with pytest.raises(ValueError, match="already registered"):
            register("_test_half")(Half)
    finally:
        LOSSES.pop("_test_half", None)


def test_batch_shape_checks():
    with pytest.raises(ValueError, match="2 weights for a batch of 3"):
        compute_loss(CONSTANT, torch.zeros(3, 4, 10), torch.zeros(3, 4, dtype=torch.long), [1, 1])
