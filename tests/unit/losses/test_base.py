"""The contract every loss keeps (kaft.losses.base): the default weighted CE against closed forms, the registry,
and every registered loss against an independent computation (:data:`REFERENCES`); a loss registered inside a test
trains end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers.losses import CONSTANT, KAFT, one_label_batch, ragged_batch

from kaft import losses
from kaft.errors import ConfigError
from kaft.losses import LOSSES, Loss, compute_loss, sample_weights, validate_loss_cfg


# ----------------------------------------------------------------------------------------------- weighted CE
def test_constant_equals_token_mean_ce_with_one_label_per_sample():
    logits, labels, pos, tok = one_label_batch()
    ref = F.cross_entropy(logits[torch.arange(5), pos - 1], tok)  # HF shift: position t-1 predicts label t
    got = compute_loss(CONSTANT, logits, labels, torch.ones(5))
    assert torch.allclose(got, ref, atol=1e-6)
    # and the HF causal-LM reference (shift inside, token mean) agrees
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 30), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(got, hf, atol=1e-6)


def test_constant_is_mean_of_per_sample_means_with_ragged_labels():
    logits, labels = ragged_batch()
    per_tok = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    mask = labels[:, 1:] != -100
    per_sample = (per_tok * mask).sum(1) / mask.sum(1)
    got = compute_loss(CONSTANT, logits, labels, [1.0, 1.0, 1.0])
    assert torch.allclose(got, per_sample.mean(), atol=1e-6)
    token_mean = per_tok[mask].mean()
    assert not torch.allclose(got, token_mean, atol=1e-3)  # the documented choice really differs here


def test_weighted_ce_is_sum_of_weighted_sample_means_over_batch_size():
    logits, labels = ragged_batch()
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
    logits, labels = ragged_batch()
    a = compute_loss(CONSTANT, logits, labels, [1, 2, 3])
    b = compute_loss(CONSTANT, logits[:, :-1], labels[:, 1:], [1, 2, 3], labels_shifted=True)
    assert torch.allclose(a, b, atol=1e-7)


def test_zero_weight_sample_has_zero_gradient():
    logits, labels = ragged_batch()
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
    logits, labels = ragged_batch()
    lb = logits.to(torch.bfloat16)
    got = compute_loss({"name": "eaft"}, lb, labels, [1, 1, 1])
    ref = compute_loss({"name": "eaft"}, lb.float(), labels, [1, 1, 1])
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-6)


def test_sample_weights_input_checks():
    with pytest.raises(ValueError, match="subset 4"):
        sample_weights(CONSTANT, [4], [0.5], 4)
    with pytest.raises(ValueError, match="2 subsets but 1 scores"):
        sample_weights(CONSTANT, [0, 1], [0.5], 4)


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
    "eaft": (
        {"name": "eaft", "eaft_alpha": 2.0, "top_k": 10},
        lambda x, lab, w: _ref_token_weighted(x, lab, w, _ref_eaft_gate),
    ),
    "dft": ({"name": "dft"}, lambda x, lab, w: _ref_token_weighted(x, lab, w, lambda rows, ce: torch.exp(-ce))),
    "kaft_eaft": (
        {"name": "kaft_eaft", "alpha": 0.2, "beta": 0.6, "eaft_alpha": 2.0, "top_k": 10},
        lambda x, lab, w: _ref_token_weighted(x, lab, w, _ref_eaft_gate),
    ),
    "sft_kl": ({"name": "sft_kl", "kl_beta": 0.7}, None),
    "sft_self": ({"name": "sft_self"}, _ref_weighted_ce),  # plain weighted SFT, on its own correct answers
    "dpo": ({"name": "dpo", "dpo_beta": 0.3, "weight_by_subset": True, "alpha": 0.2, "beta": 0.6}, None),
}


def _ref_sft_kl(x, ref_logits, labels, w, beta):
    b, ce, rows = _ref_label_tokens(x, labels)
    _, _, ref_rows = _ref_label_tokens(ref_logits, labels)
    kl = (rows.exp() * (rows - ref_rows)).sum(-1)
    per_sample = torch.stack([(ce + beta * kl)[b == i].mean() for i in range(x.size(0))])
    return (torch.tensor(w, dtype=torch.float64) * per_sample).sum() / x.size(0)


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
    assert name in REFERENCES, f"loss {name!r} has no independent check in tests/unit/losses/test_base.py: add one"
    cfg, ref = REFERENCES[name]
    w = sample_weights(cfg, [0, 1, 3], [0.3, 0.6, 0.9], 4)
    logits, labels = ragged_batch(seed=12, v=40)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    if LOSSES.get(name).needs == "pairs":
        chosen, rejected = labels, labels.clone()
        rejected[rejected != -100] = (rejected[rejected != -100] + 5) % 40
        ref_logits = logits.flip(0)
        pc, pr = (losses.sequence_logps(x1, lab) for lab in (chosen, rejected))
        rc, rr = (losses.sequence_logps(ref_logits, lab) for lab in (chosen, rejected))
        got, _ = losses.make_loss(cfg).pair_loss(pc, pr, rc, rr, torch.tensor(w))
        want = _ref_dpo(x2, ref_logits, chosen, rejected, w, cfg["dpo_beta"])
    elif LOSSES.get(name).needs == "reference":
        got = compute_loss(cfg, x1, labels, w, ref_logits=logits.flip(0))
        want = _ref_sft_kl(x2, logits.flip(0), labels, w, cfg["kl_beta"])
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
            train.build_examples(tiny_tokenizer, mc_items, [1.0] * 8, "geography", None, 256)
        )
        with torch.no_grad():
            logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        constant = compute_loss(CONSTANT, logits, batch["labels"], batch["weights"]).item()
        train_cfg = {
            "batch_size": 8,
            "lr": 1e-2,
            "warmup_ratio": 0.0,
            "epochs": 3,
            "max_length": 256,
            "weight_decay": 0.0,
            "grad_accum": 1,
            "lr_scheduler": "linear",
            "logging_steps": 1,
            "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        }
        out = tmp_path / "adapter"
        model = train.train_lora(
            copy.deepcopy(tiny_model),
            tiny_tokenizer,
            mc_items,
            weights,
            train.TrainSpec(loss=cfg, train=train_cfg, seed=0, domain="geography"),
            out,
        )
        logged = [h["loss"] for h in json.loads((out / "train_log.json").read_text())["log_history"] if "loss" in h]
        assert len(logged) == 3 and logged[0] == pytest.approx(2 * constant, rel=1e-4)  # one batch of all 8 items
        assert logged[-1] < logged[0]
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and any(torch.count_nonzero(p) > 0 for p in lora_b)  # B starts at zero: the adapter moved
    finally:
        LOSSES.unregister("_test_double")
    assert "_test_double" not in LOSSES
