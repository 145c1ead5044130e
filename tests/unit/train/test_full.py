"""Full fine-tuning (kaft.train.full, ``train=full``) on the tiny Llama: every parameter changes (only the adapter's
under LoRA), constant / kaft / eaft / dpo / sft_kl train and save a model that loads on its own, the reference
(frozen copy or precomputed log-probs) is the model before training and stays so, and the config checks."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.train import DPO, ITEMS, make_model, preference_answers, sampled_records, spec, train_cfg

from kaft import train
from kaft.train import full as full_ft

pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

LOSSES = {
    "constant": {"name": "constant"},
    "kaft": {"name": "kaft", "alpha": 0.5, "beta": 0.5},
    "eaft": {"name": "eaft", "eaft_alpha": 1.0, "top_k": 20},
    "dpo": DPO,
    "sft_kl": {"name": "sft_kl"},
}


def full_cfg(**over):
    cfg = {k: v for k, v in train_cfg(lr=1e-3, **over).items() if k != "lora"}
    return {"finetune": "full", **cfg}


def _records():
    return sampled_records(ITEMS, preference_answers())


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_full_fine_tuning_trains_every_parameter_and_saves_a_model(name, tok, tmp_path):
    base = make_model(len(tok))
    before = _state(base)
    out = tmp_path / name
    records = _records() if name == "dpo" else None
    model = train.train_lora(base, tok, ITEMS, [1.0] * 8, spec(LOSSES[name], full_cfg(), 0), out, records=records)
    assert model is base and not model.training and not hasattr(model, "peft_config")  # trained in place, no adapter
    after = _state(model)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged
    log = json.loads((out / "train_log.json").read_text())
    assert log["global_step"] == 2
    loaded, loaded_tok = full_ft.load_tuned({"dtype": "float32"}, out, "cpu")
    assert loaded_tok.padding_side == "left" and len(loaded_tok) == len(tok)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    pair = full_ft.tuned_pair(model, {}, out, "cpu")
    assert pair[0] is model and pair[1].padding_side == "left"


def test_lora_changes_only_the_adapter(tok, tmp_path):
    base = make_model(len(tok))
    before = _state(base)
    model = train.train_lora(base, tok, ITEMS, [1.0] * 8, spec(LOSSES["constant"], train_cfg(), 0), tmp_path)
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in _state(model).items()}
    lora = [k for k in after if "lora_" in k]
    assert lora and all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora if "lora_B" in k)
    assert all(torch.equal(before[k], after[k]) for k in before)  # every base weight as it was


@pytest.mark.parametrize(("name", "kind"), [("sft_kl", "copy"), ("dpo", "copy")])
def test_frozen_copy_is_the_model_before_training_and_stays_frozen(name, kind, tok, tmp_path, monkeypatch):
    made, original = [], full_ft.frozen_copy
    monkeypatch.setattr(full_ft, "frozen_copy", lambda m: made.append(original(m)) or made[-1])
    base = make_model(len(tok))
    before = _state(base)
    records = _records() if name == "dpo" else None
    cfg = full_cfg(reference=kind)
    train.train_lora(base, tok, ITEMS, [1.0] * 8, spec(LOSSES[name], cfg, 0), tmp_path, records=records)
    (ref,) = made
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(torch.equal(before[k], v) for k, v in _state(ref).items())
    assert any(not torch.equal(before[k], v) for k, v in _state(base).items())  # while the policy moved


def test_precomputed_reference_equals_the_base_models_log_probs(tok):
    from kaft.losses.pairs import build_pairs

    base = make_model(len(tok))
    pairs = build_pairs(ITEMS, _records(), "dataset_self", 8, seed=0, domain="general")
    rows = train.build_pair_examples(tok, pairs, [1.0] * 8, 256)
    assert full_ft.precompute_pair_reference(base, rows, tok.pad_token_id, 3) == 8 * len(rows)
    assert base.training  # the mode it had
    batch = train.PairCollator(tok.pad_token_id)(rows)
    base.eval()
    with torch.no_grad():
        c, r = train.pair_logps(base, batch, True)
    assert torch.allclose(batch["ref_chosen"], c, atol=1e-5) and torch.allclose(batch["ref_rejected"], r, atol=1e-5)
    assert "ref_chosen" not in train.PairCollator(0)(train.build_pair_examples(tok, pairs, [1.0] * 8, 256))


def test_train_config_checks():
    train.validate_train_cfg(full_cfg())  # no lora section needed
    train.validate_train_cfg({**full_cfg(), "lora": {"r": 8}})  # a model config's partial LoRA settings: not read
    with pytest.raises(train.TrainError, match="missing"):
        train.validate_train_cfg({k: v for k, v in train_cfg().items() if k != "lora"})
    with pytest.raises(train.TrainError, match="read only under train.finetune=full"):
        train.validate_train_cfg({**train_cfg(), "reference": "copy"})
    with pytest.raises(train.TrainError, match="finetune"):
        train.validate_train_cfg({**full_cfg(), "finetune": "qlora"})
    assert train.reference_kind(full_cfg(), "pairs") == "precomputed"
    assert train.reference_kind(full_cfg(), "reference") == "copy"
    assert train.reference_kind(full_cfg(reference="copy"), "pairs") == "copy"
    assert train.reference_kind(full_cfg(), "weights") is None
    assert train.reference_kind(train_cfg(), "pairs") is None  # LoRA: the adapter-disabled base
    with pytest.raises(train.TrainError, match="cannot serve loss=sft_kl"):
        train.reference_kind(full_cfg(reference="precomputed"), "reference")


def test_a_copy_is_independent(tok):
    base = make_model(len(tok))
    ref = full_ft.frozen_copy(base)
    with torch.no_grad():
        next(base.parameters()).add_(1.0)
    assert not torch.equal(next(base.parameters()), next(ref.parameters()))
