"""Analytic checks of kaft.losses: each compares against an independent formula and can fail; every registered loss
has one (:data:`REFERENCES`), and a loss registered inside a test trains end to end."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from kaft import losses
from kaft.errors import ConfigError
from kaft.losses import LOSSES, Loss, compute_loss, sample_weights, validate_loss_cfg

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
    ({"name": "eaft", "eaft_alpha": 1.0, "top_k": 1}, 4, "'top_k'"),
    ({"name": "eaft", "eaft_alpha": -1.0}, 4, "eaft_alpha"),
    ({"name": "eaft", "alpha": 0.5}, 4, "loss eaft: .alpha. is now .eaft_alpha. \\(set loss.eaft_alpha"),
    ({"name": "focal"}, 4, "unknown loss 'focal'; choose one of"),
    ({}, 4, "unknown loss None"),
    ({"name": "eaft", "normalize": "ln20"}, 4, "'normalize' must be one of.*const3.*lnk.*none.*got 'ln20'"),
    ({"name": "eaft", "variant": "focal"}, 4, "'variant' must be one of.*masked.*power.*sigmoid.*got 'focal'"),
    ({"name": "eaft", "variant": "masked", "mask_quantile": 1.0}, 4, "mask_quantile.*\\[0, 1\\)"),
    ({"name": "eaft", "top_k": 2.5}, 4, "'top_k'.*integer"),
    ({"name": "kaft", "top_k": 20}, 4, "unknown key.*'top_k'.*eaft.*use loss=kaft_eaft"),
    ({"name": "eaft", "beta": 0.5}, 4, "unknown key.*'beta'.*use loss=kaft_eaft"),
    ({"name": "constant", "variant": "power"}, 4, "unknown key.*'variant'.*set loss.name"),
    ({"name": "kaft_eaft", "alpha": 2.0}, 4, "alpha.*\\[0, 1\\]"),
    ({"name": "kaft_eaft", "rewards": [1, 1]}, 4, "2 entries.*K=4"),
    ({"name": "kaft_eaft", "eaft_alpha": -1}, 4, "eaft_alpha"),
    ({"name": "dft", "alpha": 1.0}, 4, "loss dft: unknown key.*alpha"),
    ({"name": "dpo", "dpo_beta": 0.0}, 4, "dpo_beta.*> 0"),
    ({"name": "dpo", "pairs": "self_other"}, 4, "'pairs' must be one of.*dataset_self.*self_self.*got 'self_other'"),
    ({"name": "dpo", "max_pairs": 0}, 4, "max_pairs"),
    ({"name": "dpo", "weight_by_subset": "yes"}, 4, "weight_by_subset.*true or false"),
    ({"name": "dpo", "weight_by_subset": True}, 3, "K=3.*rewards"),
    ({"name": "dpo", "alpha": 1.5}, 4, "alpha.*\\[0, 1\\]"),
])
def test_impossible_configs_raise(cfg, k, match):
    with pytest.raises(ConfigError, match=match):  # a user error: one `kaft: error:` line
        validate_loss_cfg(cfg, k)
    with pytest.raises(ConfigError, match=match):
        sample_weights(cfg, [0], [0.5], k)


@pytest.mark.parametrize("name", LOSSES.names())
def test_unknown_loss_lists_every_registered_loss(name):
    with pytest.raises(ConfigError, match="unknown loss 'focal'") as err:
        validate_loss_cfg({"name": "focal"}, 4)
    assert repr(name) in str(err.value)


def test_valid_configs_pass():
    for cfg in (CONSTANT, KAFT, {"name": "auto_adapt"}, {"name": "eaft", "eaft_alpha": 1.0, "top_k": 20}, {"name": "dft"},
                {"name": "eaft", "eaft_alpha": 0.5, "top_k": 5, "normalize": "none", "variant": "masked", "mask_quantile": 0.3},
                {"name": "kaft_eaft", "alpha": 0.1, "beta": 0.5, "rewards": None, "eaft_alpha": 1.0, "top_k": 20,
                 "normalize": "lnk", "variant": "sigmoid", "mask_quantile": 0.15},
                {"name": "dpo", "dpo_beta": 0.5, "pairs": "self_self", "max_pairs": 2, "weight_by_subset": False,
                 "alpha": 0.1, "beta": 0.5, "rewards": None}):
        validate_loss_cfg(cfg, 4)
    validate_loss_cfg({"name": "dpo", "weight_by_subset": False}, 3)  # rewards unused: any K


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
    assert sample_weights({"name": "eaft", "eaft_alpha": 1.0, "top_k": 20}, [0, 3], [0.1, 0.9], 4) == [1.0, 1.0]


# ----------------------------------------------------------------------------------------------- eaft
@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_eaft_weight_on_uniform_logits(alpha):
    logits = torch.zeros(3, 50)
    w = losses.eaft_token_weights(logits, alpha=alpha, k=20)
    assert torch.allclose(w, torch.full((3,), (math.log(20) / 3.0) ** alpha), atol=1e-6)
    # the loss on uniform logits: every token has CE ln(V) and weight (ln20/3)^alpha
    labels = torch.full((1, 4), -100)
    labels[0, 2:] = torch.tensor([7, 9])
    got = compute_loss({"name": "eaft", "eaft_alpha": alpha, "top_k": 20}, torch.zeros(1, 4, 50), labels, [1.0])
    assert got.item() == pytest.approx((math.log(20) / 3.0) ** alpha * math.log(50), rel=1e-6)


def test_eaft_weight_on_peaked_logits_is_small():
    logits = torch.zeros(1, 50)
    logits[0, 3] = 30.0
    assert losses.eaft_token_weights(logits, 1.0, 20).item() < 1e-6


def _eaft_reference(logits, labels, alpha=1.0, k=20, norm=3.0):
    """LLaMA-Factory's eaft_loss_func, written out independently (flatten, shift, top-k entropy, / #tokens);
    ``norm`` is the entropy divisor (3.0 there, ln k for normalize=lnk, 1 for axolotl's)."""
    v = logits.size(-1)
    shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    flat = logits.float().reshape(-1, v)
    ce = F.cross_entropy(flat, shift_labels, ignore_index=-100, reduction="none")
    valid = shift_labels != -100
    src = flat[valid].detach()
    top = torch.topk(src, k=k, dim=-1).values
    p = torch.softmax(top, dim=-1)
    h = -(p * torch.log(p)).sum(-1)
    w = (h / norm) ** alpha
    return (ce[valid] * w).sum() / valid.sum(), w


@pytest.mark.parametrize("normalize,norm", [("const3", lambda k: 3.0), ("lnk", math.log), ("none", lambda k: 1.0)])
@pytest.mark.parametrize("alpha,k", [(1.0, 20), (0.5, 20), (2.0, 10)])
def test_eaft_matches_reference_formula(alpha, k, normalize, norm):
    logits, labels = _ragged_batch(seed=3, v=64)
    logits = logits * 1.5
    ref, _ = _eaft_reference(logits, labels, alpha, k, norm(k))
    cfg = {"name": "eaft", "eaft_alpha": alpha, "top_k": k, "normalize": normalize}
    got = compute_loss(cfg, logits, labels, [1.0, 1.0, 1.0])
    assert abs(got.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))  # float32: relative past 1
    assert abs(got.item() - compute_loss(CONSTANT, logits, labels, [1, 1, 1]).item()) > 1e-3
    if normalize == "const3":  # the default
        assert compute_loss({"name": "eaft", "eaft_alpha": alpha, "top_k": k}, logits, labels, [1, 1, 1]).item() == got.item()


def _label_tokens(logits, labels):
    """(flat label-position logits, targets, per-token CE) in the HF shift convention."""
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    flat = logits.reshape(-1, logits.size(-1))
    valid = shift != -100
    return flat[valid], shift[valid], F.cross_entropy(flat[valid], shift[valid], reduction="none")


def _topk_entropy_np(rows, k):
    import numpy as np

    out = []
    for r in rows.double().numpy():
        top = np.sort(r)[::-1][:k]
        p = np.exp(top - top.max())
        p /= p.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return np.array(out)


def test_eaft_sigmoid_variant_is_the_papers_gate():
    logits, labels = _ragged_batch(seed=5, v=64)
    rows, _, ce = _label_tokens(logits * 0.7, labels)
    h = _topk_entropy_np(rows, 20) / 3.0
    gate = 1.0 / (1.0 + torch.exp(-30.0 * (torch.tensor(h) - 0.17)))
    ref = (ce.double() * gate).sum() / len(h)
    got = compute_loss({"name": "eaft", "variant": "sigmoid", "eaft_alpha": 2.0}, logits * 0.7, labels, [1, 1, 1])
    assert abs(got.item() - ref.item()) < 1e-6
    # alpha has no effect on the sigmoid gate
    assert got.item() == compute_loss({"name": "eaft", "variant": "sigmoid", "eaft_alpha": 0.5}, logits * 0.7, labels,
                                      [1, 1, 1]).item()
    w = losses.eaft_token_weights(torch.zeros(2, 50), variant="sigmoid", k=20)  # H~ = ln20/3 ~ 1: fully open
    assert torch.allclose(w, torch.full((2,), 1.0 / (1.0 + math.exp(-30 * (math.log(20) / 3 - 0.17)))))


@pytest.mark.parametrize("q", [0.15, 0.5, 0.0])
def test_eaft_masked_variant_drops_tokens_below_the_batch_quantile(q):
    import numpy as np

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 9, 64, generator=g) * torch.rand(4, 9, 1, generator=g) * 4  # varied entropies
    labels = torch.randint(0, 64, (4, 9), generator=g)
    labels[:, :3] = -100                                                             # 24 label tokens
    rows, _, ce = _label_tokens(logits, labels)
    h = _topk_entropy_np(rows, 20)
    thr = np.percentile(h, 100 * q)                                                 # linear interpolation
    keep = torch.tensor(h >= thr, dtype=torch.float64)
    assert int((1 - keep).sum()) == int(np.sum(h < thr))
    if q == 0.15:
        assert int((1 - keep).sum()) == 4  # 24 distinct values: the quantile sits at rank 0.15 * 23 = 3.45
    if q == 0.0:
        assert keep.sum() == len(h)        # nothing below the minimum
    ref = (ce.double() * keep).sum() / len(h)  # dropped tokens still count in N
    for normalize in ("const3", "lnk", "none"):  # the quantile is scale-free
        cfg = {"name": "eaft", "variant": "masked", "mask_quantile": q, "normalize": normalize}
        assert abs(compute_loss(cfg, logits, labels, [1] * 4).item() - ref.item()) < 1e-6


def test_eaft_masked_variant_gradient_only_from_kept_tokens():
    logits, labels = _ragged_batch(seed=6, v=64)
    logits = (logits * torch.linspace(0.2, 3, 8).reshape(1, 8, 1)).requires_grad_(True)
    compute_loss({"name": "eaft", "variant": "masked", "mask_quantile": 0.5}, logits, labels, [1, 1, 1]).backward()
    rows_with_grad = int((logits.grad.abs().sum(-1) > 0).sum())
    assert rows_with_grad == 4  # 7 label tokens: 3 strictly below the median are dropped


# ----------------------------------------------------------------------------------------------- dft
def test_dft_weight_on_uniform_logits_is_one_over_v():
    v = 50
    w = losses.dft_token_weights(torch.zeros(3, v), torch.tensor([0, 7, 49]))
    assert torch.allclose(w, torch.full((3,), 1.0 / v), atol=1e-7)
    labels = torch.full((2, 4), -100)
    labels[:, 3] = torch.tensor([4, 9])
    got = compute_loss({"name": "dft"}, torch.zeros(2, 4, v), labels, [1.0, 1.0])
    assert got.item() == pytest.approx(math.log(v) / v, rel=1e-6)


def test_dft_matches_trl_formula_and_gradient():
    logits, labels = _ragged_batch(seed=7, v=40)
    x1 = logits.clone().requires_grad_(True)
    got = compute_loss({"name": "dft"}, x1, labels, [1, 1, 1])
    got.backward()
    # TRL dft_loss: per-token -p.detach() * log p, summed over label tokens / number of label tokens
    x2 = logits.clone().requires_grad_(True)
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:]
    mask = shift != -100
    logp = torch.log_softmax(x2, -1).gather(-1, shift.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ref = ((-logp.exp().detach() * logp) * mask).sum() / mask.sum()
    ref.backward()
    assert abs(got.item() - ref.item()) < 1e-6
    assert torch.allclose(x1.grad, x2.grad, atol=1e-7)
    assert losses.sample_weights({"name": "dft"}, [0, 3], [0.1, 0.9], 4) == [1.0, 1.0]


# ----------------------------------------------------------------------------------------------- kaft_eaft
def test_kaft_eaft_is_reward_times_eaft_weight():
    logits, labels = _ragged_batch(seed=8, v=64)
    cfg = {"name": "kaft_eaft", "alpha": 0.1, "beta": 0.5, "eaft_alpha": 2.0, "top_k": 10, "normalize": "lnk"}
    w = sample_weights(cfg, [0, 1, 3], [0.1, 0.4, 0.9], 4)
    assert w == pytest.approx([0.1, 0.5, 1.0])
    rows, _, ce = _label_tokens(logits, labels)
    h = torch.tensor(_topk_entropy_np(rows, 10) / math.log(10))
    sample_of_token = torch.tensor([0, 1, 1, 1, 1, 2, 2])  # label counts 1, 4, 2 (see _ragged_batch)
    ref = (torch.tensor(w, dtype=torch.float64)[sample_of_token] * h ** 2.0 * ce.double()).sum() / 7
    got = compute_loss(cfg, logits, labels, w)
    assert abs(got.item() - ref.item()) < 1e-6
    # with all rewards 1 it is eaft
    eaft = {"name": "eaft", "eaft_alpha": 2.0, "top_k": 10, "normalize": "lnk"}
    assert abs(compute_loss(cfg, logits, labels, [1, 1, 1]).item() - compute_loss(eaft, logits, labels,
                                                                                  [1, 1, 1]).item()) < 1e-7


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
        (0.1 * by_hand[0] + 0.5 * by_hand[1] + by_hand[2]) / 3, rel=1e-6)
    # policy = reference: ln 2 whatever beta
    assert losses.dpo_loss(rc, rr, rc, rr, 5.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_sequence_logps_sums_label_log_probs_and_shares_rows():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 5, 12, generator=g)
    chosen = torch.full((2, 5), -100)
    chosen[0, 3:5] = torch.tensor([4, 7])
    chosen[1, 4] = 2
    rejected = chosen.clone()
    rejected[1, 4] = 9                         # pair 1: rejected read from the same row as chosen
    lsm = torch.log_softmax(logits, -1)
    want_c = torch.tensor([lsm[0, 2, 4] + lsm[0, 3, 7], lsm[1, 3, 2]])
    want_r = torch.tensor([lsm[1, 2, 4] + lsm[1, 3, 7], lsm[1, 3, 9]])
    assert torch.allclose(losses.sequence_logps(logits, chosen), want_c, atol=1e-6)
    got_r = losses.sequence_logps(logits, rejected, rows=torch.tensor([1, 1]))  # pair 0's rejected in row 1
    assert torch.allclose(got_r, want_r, atol=1e-6)
    shifted = losses.sequence_logps(logits[:, :-1], chosen[:, 1:], labels_shifted=True)
    assert torch.allclose(shifted, want_c, atol=1e-6)


def test_dpo_config_and_needs_samples():
    cfg = {"name": "dpo", "dpo_beta": 0.1, "pairs": "self_self", "max_pairs": 3, "weight_by_subset": True,
           "alpha": 0.2, "beta": 0.6, "rewards": None}
    validate_loss_cfg(cfg, 4)
    # SMA's pairs come from its own samples; only pair_source=detection needs the probe's
    assert not losses.needs_samples(cfg) and losses.is_pairwise(cfg)
    assert losses.needs_samples({**cfg, "pair_source": "detection"}) and not losses.needs_samples(KAFT)
    assert [n for n in LOSSES.names() if losses.is_pairwise({"name": n})] == ["dpo"]
    assert sample_weights(cfg, [0, 1, 2], [0.1, 0.4, 0.9], 4) == pytest.approx([0.2, 0.6, 1.0])
    assert sample_weights({**cfg, "weight_by_subset": False}, [0, 1], [0.1, 0.4], 4) == [1.0, 1.0]
    # SMA §4.1 (Qwen2): n = 8, top-k 50, top-p 0.9, temperature 1.4; m = 8 pairs; self-self pairs
    assert dataclasses.asdict(losses.make_loss({"name": "dpo"}).s) == {
        "dpo_beta": 0.1, "pairs": "self_self", "pair_source": "sma", "max_pairs": 8, "weight_by_subset": False,
        "num_samples": 8, "temperature": 1.4, "top_k": 50, "top_p": 0.9, "max_new_tokens": 4,
        "alpha": 0.1, "beta": 0.5, "rewards": None}
    assert losses.sma_sampling(cfg) == {"num_samples": 8, "temperature": 1.4, "top_k": 50, "top_p": 0.9,
                                        "max_new_tokens": 4}
    assert losses.sma_sampling({**cfg, "pair_source": "detection"}) is None and losses.sma_sampling(KAFT) is None
    for bad, match in (({"pair_source": "both"}, "'pair_source' must be one of"), ({"top_p": 0.0}, "top_p"),
                       ({"top_k": -1}, "top_k"), ({"temperature": 0}, "temperature"), ({"num_samples": 0}, "num_samp")):
        with pytest.raises(ValueError, match=match):
            validate_loss_cfg({**cfg, **bad}, 4)
    with pytest.raises(ValueError, match="preference pairs"):
        compute_loss(cfg, torch.zeros(1, 3, 10), torch.tensor([[-100, 1, 2]]), [1.0])


def test_eaft_no_gradient_through_weight():
    logits, labels = _ragged_batch(seed=4, v=64)
    x1 = logits.clone().requires_grad_(True)
    compute_loss({"name": "eaft", "eaft_alpha": 1.0, "top_k": 20}, x1, labels, [1, 1, 1]).backward()
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
    class Half(Loss):
        label = "half"

        def weights(self, subsets, scores, k):
            return [0.5] * len(subsets)

    LOSSES.register("_test_half", Half)
    try:
        assert LOSSES["_test_half"] is Half and "_test_half" in LOSSES.names()
        assert sample_weights({"name": "_test_half"}, [0, 1], [0, 0], 2) == [0.5, 0.5]
        with pytest.raises(ValueError, match="already registered"):
            LOSSES.register("_test_half", type("Other", (Loss,), {}))
    finally:
        LOSSES.unregister("_test_half")
    assert "_test_half" not in LOSSES


def test_batch_shape_checks():
    with pytest.raises(ValueError, match="2 weights for a batch of 3"):
        compute_loss(CONSTANT, torch.zeros(3, 4, 10), torch.zeros(3, 4, dtype=torch.long), [1, 1])


# ----------------------------------------------------------------------------------------------- every loss
def _ref_label_tokens(x, labels):
    """(sample index, float64 CE, float64 log-softmax row) of every label token, HF shift, computed independently."""
    shift = labels[:, 1:]
    logp = torch.log_softmax(x[:, :-1].double(), -1)
    b, t = (shift != -100).nonzero(as_tuple=True)
    rows = logp[b, t]
    return b, -rows.gather(-1, shift[b, t].unsqueeze(-1)).squeeze(-1), rows


def _ref_weighted_ce(x, labels, w):
    b, ce, _ = _ref_label_tokens(x, labels)
    per_sample = torch.stack([ce[b == i].mean() for i in range(x.size(0))])
    return (torch.tensor(w, dtype=torch.float64) * per_sample).sum() / x.size(0)


def _ref_token_weighted(x, labels, w, gate):
    """sum_t g_t R_i(t) CE_t / N with ``gate(log-softmax rows, ce) -> g``, both taken as constants."""
    b, ce, rows = _ref_label_tokens(x, labels)
    g = gate(rows.detach(), ce.detach())
    return (torch.tensor(w, dtype=torch.float64)[b] * g * ce).sum() / len(ce)


def _ref_eaft_gate(rows, ce, k=10, alpha=2.0):
    top = rows.sort(-1, descending=True).values[:, :k]  # top-k of log p = top-k of the logits
    p = torch.softmax(top, -1)
    return (-(p * p.log()).sum(-1) / 3.0) ** alpha


#: loss name -> (config, reference(logits, labels, weights)); every registered loss needs an entry
REFERENCES = {
    "constant": ({"name": "constant"}, _ref_weighted_ce),
    "kaft": ({"name": "kaft", "alpha": 0.2, "beta": 0.6}, _ref_weighted_ce),
    "auto_adapt": ({"name": "auto_adapt"}, _ref_weighted_ce),
    "eaft": ({"name": "eaft", "eaft_alpha": 2.0, "top_k": 10},
             lambda x, lab, w: _ref_token_weighted(x, lab, w, _ref_eaft_gate)),
    "dft": ({"name": "dft"}, lambda x, lab, w: _ref_token_weighted(x, lab, w, lambda rows, ce: torch.exp(-ce))),
    "kaft_eaft": ({"name": "kaft_eaft", "alpha": 0.2, "beta": 0.6, "eaft_alpha": 2.0, "top_k": 10},
                  lambda x, lab, w: _ref_token_weighted(x, lab, w, _ref_eaft_gate)),
    "dpo": ({"name": "dpo", "dpo_beta": 0.3, "weight_by_subset": True, "alpha": 0.2, "beta": 0.6}, None),
}


def _ref_dpo(policy, ref, chosen, rejected, w, beta):
    def seq(x, lab):
        _, ce, _ = _ref_label_tokens(x, lab)
        b, _ = (lab[:, 1:] != -100).nonzero(as_tuple=True)
        return torch.stack([-ce[b == i].sum() for i in range(lab.size(0))])

    delta = (seq(policy, chosen) - seq(ref, chosen)) - (seq(policy, rejected) - seq(ref, rejected))
    return (torch.tensor(w, dtype=torch.float64) * -torch.log(torch.sigmoid(beta * delta))).sum() / len(w)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_matches_an_independent_computation_with_detached_weights(name):
    """Random logits, ragged label positions (the rest masked), rewards from sample_weights; value and gradient
    against a float64 formula written here, whose token weights are constants (no gradient through them)."""
    assert name in REFERENCES, f"loss {name!r} has no independent check in tests/unit/losses/test_losses.py: add one"
    cfg, ref = REFERENCES[name]
    w = sample_weights(cfg, [0, 1, 3], [0.3, 0.6, 0.9], 4)
    logits, labels = _ragged_batch(seed=12, v=40)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    if LOSSES.get(name).needs == "pairs":
        chosen, rejected = labels, labels.clone()
        rejected[rejected != -100] = (rejected[rejected != -100] + 5) % 40
        ref_logits = logits.flip(0)
        pc, pr = (losses.sequence_logps(x1, lab) for lab in (chosen, rejected))
        rc, rr = (losses.sequence_logps(ref_logits, lab) for lab in (chosen, rejected))
        got, _ = losses.make_loss(cfg).pair_loss(pc, pr, rc, rr, torch.tensor(w))
        want = _ref_dpo(x2, ref_logits, chosen, rejected, w, cfg["dpo_beta"])
    else:
        got = compute_loss(cfg, x1, labels, w)
        want = ref(x2, labels, w)
    got.backward()
    want.backward()
    assert abs(got.item() - want.item()) < 1e-5 * max(1.0, abs(want.item()))
    assert torch.allclose(x1.grad, x2.grad.float(), atol=1e-6)
    assert torch.count_nonzero(x1.grad[0]) > 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_declares_label_reads_needs_and_settings(name):
    from kaft.train import FEEDS

    cls = LOSSES.get(name)
    assert isinstance(cls.label, str) and cls.label
    assert isinstance(cls.reads, tuple) and set(cls.reads) <= set(cls.keys()), (cls.reads, cls.keys())
    assert cls.needs in FEEDS
    loss = losses.make_loss({"name": name})  # every key has a default
    assert set(dataclasses.asdict(loss.s)) == set(cls.keys())
    with pytest.raises(ConfigError, match=f"loss {name}: (unknown key|'alhpa' is now)"):
        validate_loss_cfg({"name": name, "alhpa": 0.1}, 4)


def test_a_loss_registered_in_a_test_trains_end_to_end(tiny_tokenizer, tiny_model, mc_items, tmp_path):
    """A loss added from outside kaft (here: every sample counts twice) runs through sample_weights and train_lora
    with no other file touched: its first training step's loss is twice plain SFT's on the same batch."""
    pytest.importorskip("peft")
    import copy
    import json

    from kaft import train

    class Double(Loss):
        """R_i = 2 for every item."""

        label = "double (R = 2)"

        def weights(self, subsets, scores, k):
            return [2.0] * len(subsets)

    LOSSES.register("_test_double", Double)
    try:
        cfg = {"name": "_test_double"}
        assert LOSSES.get("_test_double").label == "double (R = 2)" and LOSSES.get("_test_double").reads == ()
        assert not losses.is_pairwise(cfg) and not losses.needs_samples(cfg) and losses.sma_sampling(cfg) is None
        weights = sample_weights(cfg, [0, 1, 2, 3] * 2, [0.5] * 8, 4)
        assert weights == [2.0] * 8
        batch = train.WeightedCollator(tiny_tokenizer.pad_token_id)(
            train.build_examples(tiny_tokenizer, mc_items, [1.0] * 8, "geography", None, 256))
        with torch.no_grad():
            logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        constant = compute_loss(CONSTANT, logits, batch["labels"], batch["weights"]).item()
        train_cfg = {"batch_size": 8, "lr": 1e-2, "warmup_ratio": 0.0, "epochs": 3, "max_length": 256,
                     "weight_decay": 0.0, "grad_accum": 1, "lr_scheduler": "linear", "logging_steps": 1,
                     "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
        out = tmp_path / "adapter"
        model = train.train_lora(copy.deepcopy(tiny_model), tiny_tokenizer, mc_items, weights, cfg, train_cfg, out,
                                 seed=0, domain="geography")
        logged = [h["loss"] for h in json.loads((out / "train_log.json").read_text())["log_history"] if "loss" in h]
        assert len(logged) == 3 and logged[0] == pytest.approx(2 * constant, rel=1e-4)  # one batch of all 8 items
        assert logged[-1] < logged[0]
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and any(torch.count_nonzero(p) > 0 for p in lora_b)  # B starts at zero: the adapter moved
    finally:
        LOSSES.unregister("_test_double")
    assert "_test_double" not in LOSSES


# ----------------------------------------------------------------------------------------------- pairs
def _items_and_records():
    from kaft.data import MCItem

    items = [MCItem(f"q{i}", f"question {i} ?", ["w", "x", "y", "z"], i % 4, domain="geography") for i in range(4)]
    records = [
        # q0 (gold 0): wrong answers 2 (x3), 1 (x1), 3 (x3), unparsable ignored; right twice
        {"id": "q0", "score": 0.2, "gold": 0, "orders": [[0, 1, 2, 3], [1, 0, 3, 2]],
         "answers": [[2, 2, 1, 0, -1], [3, 3, 3, 2, 0]]},
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
        [("q0", 0, 2, 3)], [("q0", 0, 3, 3)])          # 2 and 3 were each named 3 times: a seeded tie-break
    assert sorted((p["id"], p["rejected_option"]) for p in pairs) == [("q0", 1), ("q0", 2), ("q0", 3), ("q2", 0)]
    assert [p["rejected_option"] for p in pairs if p["id"] == "q0"][-1] == 1   # the rarest wrong option last
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
    assert [(p["id"], p["count"]) for p in capped] == [("q0", 3), ("q2", 2)]      # the most frequent wrong option
    assert build_pairs(items, records, "dataset_self", 1, seed=0) == capped
    firsts = {build_pairs(items, records, "dataset_self", 1, seed=s)[0]["rejected_option"] for s in range(16)}
    assert firsts == {2, 3}                                                       # the seed only breaks the tie
    # an item's pairs do not depend on the other items
    alone = build_pairs(items[:1], records[:1], "dataset_self", 8, seed=0)
    assert alone == [p for p in build_pairs(items, records, "dataset_self", 8, seed=0) if p["id"] == "q0"]


def test_sma_pairs_are_correct_times_incorrect_down_sampled():
    """SMA §3: pairs = correct count × incorrect count per question, randomly down-sampled to at most m."""
    from kaft.data import MCItem
    from kaft.losses.pairs import build_pairs

    items = [MCItem(f"s{j}", f"question {j} ?", ["w", "x", "y", "z"], 0, domain="geography") for j in range(3)]
    records = [{"id": "s0", "gold": 0, "answers": [[0, 0, 1, 1, 1, 2, -1, 0]]},   # 3 correct x 4 incorrect = 12
               {"id": "s1", "gold": 0, "answers": [[0, 3, -1, -1, -1, -1, -1, -1]]},  # 1 x 1
               {"id": "s2", "gold": 0, "answers": [[1, 1, 2, 2, 3, 3, 1, 1]]}]   # never right
    full = build_pairs(items, records, "self_self", 100, 0, source="sma")
    s0 = [(p["chosen_option"], p["rejected_option"]) for p in full if p["id"] == "s0"]
    assert s0 == [(0, r) for _ in range(3) for r in (1, 1, 1, 2)] and [p["id"] for p in full].count("s1") == 1
    capped = build_pairs(items, records, "self_self", 8, 0, source="sma")
    kept = [p for p in capped if p["id"] == "s0"]
    assert len(kept) == 8 and all(p["count"] == (3 if p["rejected_option"] == 1 else 1) for p in kept)
    # a wrong answer sampled often gives more pairs: over seeds, option 1 (3 of 4 incorrect) has ~3/4 of them
    share = [sum(p["rejected_option"] == 1 for p in build_pairs(items[:1], records[:1], "self_self", 4, s,
                                                                 source="sma")) / 4 for s in range(200)]
    assert abs(sum(share) / len(share) - 0.75) < 0.05
    assert build_pairs(items, records, "self_self", 8, 0, source="sma") == capped  # seeded
    # dataset_self: the reference answer x each incorrect sample, so items never answered right count too
    ds = build_pairs(items, records, "dataset_self", 8, 0, source="sma")
    assert [p["id"] for p in ds].count("s0") == 4 and [p["id"] for p in ds].count("s2") == 8
    with pytest.raises(ValueError, match="unknown source"):
        build_pairs(items, records, "self_self", 8, 0, source="both")


def test_sma_sampling_asks_the_backend_for_smas_settings_on_the_training_prompt():
    from kaft.data import MCItem
    from kaft.detection import sample_responses
    from kaft.prompts import format_question

    class Backend:
        def sample(self, prompts, n, temperature, max_new_tokens, seed, top_k=0, top_p=1.0):
            self.call = (prompts, n, temperature, max_new_tokens, seed, top_k, top_p)
            return [[" B", " A\n", "(C)", "zzz"][:n] for _ in prompts]

    items = [MCItem("s0", "question 0 ?", ["w", "x", "y", "z"], 1, domain="geography")]
    be = Backend()
    recs = sample_responses(be, items, {"num_samples": 4, "temperature": 1.4, "top_k": 50, "top_p": 0.9,
                                        "max_new_tokens": 4}, seed=3, domain="general")
    assert be.call == ([format_question("question 0 ?", ["w", "x", "y", "z"], "geography")], 4, 1.4, 4, 3, 50, 0.9)
    assert recs == [{"id": "s0", "gold": 1, "answers": [[1, 0, 2, -1]]}]


def test_top_k_top_p_filter_matches_hand_computation():
    from kaft.detection import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    # nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the third token (0.15) is needed; the rest go
    assert keep(filter_logits(logits, top_p=0.8)) == [True, True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.7)) == [True, True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.01)) == [True, False, False, False, False]
    assert torch.equal(filter_logits(logits), logits)
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert keep(filter_logits(shuffled, top_k=4, top_p=0.8)) == [False, True, False, True, True]


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
