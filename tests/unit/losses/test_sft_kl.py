"""loss=sft_kl (EAFT App. E/F's SFT_KL) against closed forms: kl_beta = 0 is plain SFT, a policy equal to the
reference has KL 0 (and the CE's gradient), a hand-computed KL on a two-token vocabulary, and the trainer's
adapter-disabled reference forward on a tiny LoRA model."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.losses import CONSTANT, ragged_batch

from kaft import losses
from kaft.errors import ConfigError
from kaft.losses import compute_loss, make_loss, token_kl

SFT_KL = {"name": "sft_kl", "kl_beta": 0.5}


def test_defaults_follow_eaft_appendix_f():
    loss = make_loss({"name": "sft_kl"})
    assert loss.s.kl_beta == 0.5 and loss.needs == "reference" and loss.label == "SFT_KL"
    assert not losses.is_pairwise(SFT_KL) and losses.sma_sampling(SFT_KL) is None
    with pytest.raises(ConfigError, match="kl_beta"):
        make_loss({"name": "sft_kl", "kl_beta": -1})


def test_beta_zero_is_plain_sft_whatever_the_reference():
    logits, labels = ragged_batch(seed=3)
    ref = torch.randn_like(logits) * 4
    w = [0.2, 1.0, 0.7]
    got = compute_loss({"name": "sft_kl", "kl_beta": 0.0}, logits, labels, w, ref_logits=ref)
    assert torch.allclose(got, compute_loss(CONSTANT, logits, labels, w), atol=1e-6)


def test_policy_equal_to_reference_has_zero_kl_and_the_ce_gradient():
    logits, labels = ragged_batch(seed=4)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got = compute_loss(SFT_KL, x1, labels, [1, 1, 1], ref_logits=logits.clone())
    want = compute_loss(CONSTANT, x2, labels, [1, 1, 1])
    got.backward()
    want.backward()
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)  # KL's gradient vanishes at pi_theta = pi_ref
    assert torch.allclose(token_kl(logits[0], logits[0]), torch.zeros(8), atol=1e-6)


def test_hand_computed_kl_on_a_two_token_vocabulary():
    """Policy p = (0.5, 0.5) (logits 0, 0), reference q = (0.8, 0.2) (logits ln 4, 0); one sample, one label token
    (token 0). KL(p || q) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2) = 0.5 ln(25/16); CE = ln 2."""
    logits = torch.zeros(1, 2, 2)
    ref = torch.tensor([[[math.log(4.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 0]])
    kl = 0.5 * math.log(25 / 16)
    assert abs(token_kl(logits[0, :1], ref[0, :1]).item() - kl) < 1e-6
    got = compute_loss({"name": "sft_kl", "kl_beta": 0.5}, logits, labels, [1.0], ref_logits=ref)
    assert abs(got.item() - (math.log(2) + 0.5 * kl)) < 1e-6
    # the sample reward scales the whole per-sample term, over the batch size
    got2 = compute_loss({"name": "sft_kl", "kl_beta": 2.0}, logits, labels, [0.5], ref_logits=ref)
    assert abs(got2.item() - 0.5 * (math.log(2) + 2.0 * kl)) < 1e-6


def test_kl_is_a_per_sample_token_mean():
    logits, labels = ragged_batch(seed=5)
    ref = torch.randn_like(logits)
    got = compute_loss({"name": "sft_kl", "kl_beta": 1.0}, logits, labels, [1, 1, 1], ref_logits=ref)
    mask = labels[:, 1:] != -100
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    p = torch.log_softmax(logits[:, :-1], -1)
    q = torch.log_softmax(ref[:, :-1], -1)
    kl = (p.exp() * (p - q)).sum(-1)
    want = (((ce + kl) * mask).sum(1) / mask.sum(1)).mean()
    assert torch.allclose(got, want, atol=1e-5)


def test_without_reference_logits_it_says_how_to_get_them():
    logits, labels = ragged_batch()
    with pytest.raises(ConfigError, match="needs the reference model's logits"):
        compute_loss(SFT_KL, logits, labels, [1, 1, 1])


def test_trainer_reference_is_the_adapter_disabled_base(tmp_path):
    """Right after the adapter is added (LoRA B = 0) the policy equals the reference: the trainer's loss is plain
    SFT's; with a perturbed adapter it exceeds the CE by kl_beta * KL > 0, the KL against the base model's logits."""
    pytest.importorskip("peft")
    from helpers.train import ITEMS, make_model, make_tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from kaft import train

    tok = make_tokenizer()
    base = make_model(len(tok))
    with torch.no_grad():
        rows = train.build_examples(tok, ITEMS[:3], [1.0, 1.0, 1.0], "general", None, 256)
        batch = train.WeightedCollator(tok.pad_token_id)(rows)
        fwd = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        base_logits = base(**fwd).logits
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, remove_unused_columns=False)
    trainer = train.FEEDS.get("reference").trainer()(model=model, args=args, data_collator=None, loss_cfg=SFT_KL)
    with torch.no_grad():
        same = trainer.compute_loss(model, dict(batch))
        assert torch.allclose(same, compute_loss(CONSTANT, base_logits, batch["labels"], batch["weights"]), atol=1e-5)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.5)
        moved = trainer.compute_loss(model, dict(batch))
        logits = model(**fwd).logits
    want = compute_loss(SFT_KL, logits, batch["labels"], batch["weights"], ref_logits=base_logits)
    assert torch.allclose(moved, want, atol=1e-5)
    assert moved > compute_loss(CONSTANT, logits, batch["labels"], batch["weights"]) + 1e-4
