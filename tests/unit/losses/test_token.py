"""kaft.losses.token: EAFT, DFT and KaFT-EAFT's token weights against their papers' formulas, computed independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.losses import CONSTANT, ragged_batch

from kaft import losses
from kaft.losses import compute_loss, sample_weights


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
    logits, labels = ragged_batch(seed=3, v=64)
    logits = logits * 1.5
    ref, _ = _eaft_reference(logits, labels, alpha, k, norm(k))
    cfg = {"name": "eaft", "eaft_alpha": alpha, "top_k": k, "normalize": normalize}
    got = compute_loss(cfg, logits, labels, [1.0, 1.0, 1.0])
    assert abs(got.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))  # float32: relative past 1
    assert abs(got.item() - compute_loss(CONSTANT, logits, labels, [1, 1, 1]).item()) > 1e-3
    if normalize == "const3":  # the default
        assert (
            compute_loss({"name": "eaft", "eaft_alpha": alpha, "top_k": k}, logits, labels, [1, 1, 1]).item()
            == got.item()
        )


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
    logits, labels = ragged_batch(seed=5, v=64)
    rows, _, ce = _label_tokens(logits * 0.7, labels)
    h = _topk_entropy_np(rows, 20) / 3.0
    gate = 1.0 / (1.0 + torch.exp(-30.0 * (torch.tensor(h) - 0.17)))
    ref = (ce.double() * gate).sum() / len(h)
    got = compute_loss({"name": "eaft", "variant": "sigmoid", "eaft_alpha": 2.0}, logits * 0.7, labels, [1, 1, 1])
    assert abs(got.item() - ref.item()) < 1e-6
    # alpha has no effect on the sigmoid gate
    assert (
        got.item()
        == compute_loss(
            {"name": "eaft", "variant": "sigmoid", "eaft_alpha": 0.5}, logits * 0.7, labels, [1, 1, 1]
        ).item()
    )
    w = losses.eaft_token_weights(torch.zeros(2, 50), variant="sigmoid", k=20)  # H~ = ln20/3 ~ 1: fully open
    assert torch.allclose(w, torch.full((2,), 1.0 / (1.0 + math.exp(-30 * (math.log(20) / 3 - 0.17)))))


@pytest.mark.parametrize("q", [0.15, 0.5, 0.0])
def test_eaft_masked_variant_drops_tokens_below_the_batch_quantile(q):
    import numpy as np

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 9, 64, generator=g) * torch.rand(4, 9, 1, generator=g) * 4  # varied entropies
    labels = torch.randint(0, 64, (4, 9), generator=g)
    labels[:, :3] = -100  # 24 label tokens
    rows, _, ce = _label_tokens(logits, labels)
    h = _topk_entropy_np(rows, 20)
    thr = np.percentile(h, 100 * q)  # linear interpolation
    keep = torch.tensor(h >= thr, dtype=torch.float64)
    assert int((1 - keep).sum()) == int(np.sum(h < thr))
    if q == 0.15:
        assert int((1 - keep).sum()) == 4  # 24 distinct values: the quantile sits at rank 0.15 * 23 = 3.45
    if q == 0.0:
        assert keep.sum() == len(h)  # nothing below the minimum
    ref = (ce.double() * keep).sum() / len(h)  # dropped tokens still count in N
    for normalize in ("const3", "lnk", "none"):  # the quantile is scale-free
        cfg = {"name": "eaft", "variant": "masked", "mask_quantile": q, "normalize": normalize}
        assert abs(compute_loss(cfg, logits, labels, [1] * 4).item() - ref.item()) < 1e-6


def test_eaft_masked_variant_gradient_only_from_kept_tokens():
    logits, labels = ragged_batch(seed=6, v=64)
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
    logits, labels = ragged_batch(seed=7, v=40)
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
    logits, labels = ragged_batch(seed=8, v=64)
    cfg = {"name": "kaft_eaft", "alpha": 0.1, "beta": 0.5, "eaft_alpha": 2.0, "top_k": 10, "normalize": "lnk"}
    w = sample_weights(cfg, [0, 1, 3], [0.1, 0.4, 0.9], 4)
    assert w == pytest.approx([0.1, 0.5, 1.0])
    rows, _, ce = _label_tokens(logits, labels)
    h = torch.tensor(_topk_entropy_np(rows, 10) / math.log(10))
    sample_of_token = torch.tensor([0, 1, 1, 1, 1, 2, 2])  # label counts 1, 4, 2 (see ragged_batch)
    ref = (torch.tensor(w, dtype=torch.float64)[sample_of_token] * h**2.0 * ce.double()).sum() / 7
    got = compute_loss(cfg, logits, labels, w)
    assert abs(got.item() - ref.item()) < 1e-6
    # with all rewards 1 it is eaft
    eaft = {"name": "eaft", "eaft_alpha": 2.0, "top_k": 10, "normalize": "lnk"}
    assert (
        abs(compute_loss(cfg, logits, labels, [1, 1, 1]).item() - compute_loss(eaft, logits, labels, [1, 1, 1]).item())
        < 1e-7
    )


def test_eaft_no_gradient_through_weight():
    logits, labels = ragged_batch(seed=4, v=64)
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
