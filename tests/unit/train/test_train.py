"""kaft.train on a tiny random Llama and a word-level tokenizer built here (nothing downloaded)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import conftest as tiny

from kaft import losses, train
from kaft.data import MCItem
from kaft.prompts import DEFAULT_INSTRUCTION, format_question

pytest.importorskip("peft")

WORDS = ("For the following general question select one correct answer from to Question Options Answer "
         "what colour is sky grass snow sun blue green white yellow red black which animal barks meows "
         "dog cat cow fish how many legs has a spider eight six four two").split()


def make_tokenizer():
    return tiny.make_tokenizer([*WORDS, *".:,?"], add_bos=True)


def make_model(vocab_size: int, seed: int = 0):
    return tiny.make_model(vocab_size, seed, num_attention_heads=4, max_position_embeddings=256).train()


ITEMS = [
    MCItem("0", "what colour is the sky ?", ["blue", "green", "red", "black"], 0),
    MCItem("1", "what colour is grass ?", ["white", "green", "red", "blue"], 1),
    MCItem("2", "what colour is snow ?", ["green", "red", "white", "black"], 2),
    MCItem("3", "what colour is the sun ?", ["blue", "green", "red", "yellow"], 3),
    MCItem("4", "which animal barks ?", ["dog", "cat", "cow", "fish"], 0),
    MCItem("5", "which animal meows ?", ["dog", "cat", "cow", "fish"], 1),
    MCItem("6", "how many legs has a spider ?", ["two", "four", "eight", "six"], 2),
    MCItem("7", "how many legs has a dog ?", ["two", "six", "eight", "four"], 3),
]


def train_cfg(**over):
    cfg = {"batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "epochs": 1, "max_length": 256, "weight_decay": 0.0,
           "grad_accum": 1, "lr_scheduler": "linear", "logging_steps": 1,
           "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
    cfg.update(over)
    return cfg


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def batch_loss(model, tok, loss_cfg, items=ITEMS):
    rows = train.build_examples(tok, items, [1.0] * len(items), "general", None, 256)
    batch = train.WeightedCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return losses.compute_loss(loss_cfg, logits, batch["labels"], batch["weights"]).item()


# ----------------------------------------------------------------------------------------------- examples
def test_encode_example_masks_prompt_and_adds_bos(tok):
    it = ITEMS[1]
    prompt = format_question(it.question, it.options, "general", DEFAULT_INSTRUCTION)
    ids, labels = train.encode_example(tok, prompt, " B", 256)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    b_id = tok.convert_tokens_to_ids("B")
    assert ids == [tok.bos_token_id] + p_ids + [b_id]
    assert labels == [-100] * (1 + len(p_ids)) + [b_id]
    assert tok.unk_token_id not in ids  # the test vocab covers the prompt


def test_encode_example_truncates_prompt_from_the_left(tok):
    prompt = format_question(ITEMS[0].question, ITEMS[0].options)
    full, _ = train.encode_example(tok, prompt, " A", 256)
    ids, labels = train.encode_example(tok, prompt, " A", 10)
    assert len(ids) == 10
    assert ids[0] == tok.bos_token_id and ids[1:] == full[len(full) - 9:]
    assert labels[-1] == ids[-1] and set(labels[:-1]) == {-100}
    with pytest.raises(ValueError, match="max_length=2"):
        train.encode_example(tok, prompt, " A", 2)


def test_special_prefix_none_when_tokenizer_adds_nothing(tok):
    bare = copy.deepcopy(tok)
    from tokenizers import processors

    bare.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    assert train.special_prefix(tok) == [tok.bos_token_id]
    assert train.special_prefix(bare) == []


def test_collator_pads_right_and_stacks_weights():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, -100, 7], "weights": 0.1},
            {"input_ids": [5, 8], "labels": [-100, 8], "weights": 1.0}]
    b = train.WeightedCollator(pad_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7], [-100, 8, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert torch.allclose(b["weights"], torch.tensor([0.1, 1.0]))


def test_train_cfg_validation():
    with pytest.raises(ValueError, match="lr_scheduler"):
        train.validate_train_cfg(train_cfg(lr_scheduler="cosine_restarts_typo"))
    with pytest.raises(ValueError, match="warmup_ratio"):
        train.validate_train_cfg(train_cfg(warmup_ratio=1.5))
    with pytest.raises(ValueError, match="missing"):
        train.validate_train_cfg({k: v for k, v in train_cfg().items() if k != "lr"})
    train.validate_train_cfg(train_cfg())


# ----------------------------------------------------------------------------------------------- trainer
def test_trainer_sliced_logits_loss_equals_full_logits_loss(tok, tmp_path):
    from transformers import TrainingArguments

    model = make_model(len(tok))
    rows = train.build_examples(tok, ITEMS[:3], [0.1, 0.5, 1.0], "general", None, 256)
    rows[2]["input_ids"] = rows[2]["input_ids"][:-1] + [4, 5]  # a ragged two-token target in another position
    rows[2]["labels"] = rows[2]["labels"][:-1] + [4, 5]
    batch = train.WeightedCollator(tok.pad_token_id)(rows)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                             remove_unused_columns=False)
    for cfg in ({"name": "kaft", "alpha": 0.1, "beta": 0.5}, {"name": "eaft", "eaft_alpha": 1.0, "top_k": 20}):
        trainer = train.weighted_trainer_class()(model=model, args=args, data_collator=None, loss_cfg=cfg)
        assert trainer._slice_logits
        with torch.no_grad():
            got = trainer.compute_loss(model, dict(batch))
            full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = losses.compute_loss(cfg, full, batch["labels"], batch["weights"])
        assert torch.allclose(got, ref, atol=1e-5), cfg


def test_zero_weight_leaves_lora_unchanged_and_weight_one_changes_it(tok, tmp_path):
    from peft import get_peft_model
    from transformers import set_seed

    base = make_model(len(tok))
    cfg = train_cfg(epochs=2)
    set_seed(7)  # train_lora seeds the same way right before adding the adapter
    init = lora_state(get_peft_model(copy.deepcopy(base), train.lora_config(cfg["lora"])))
    assert init and all(torch.count_nonzero(v) == 0 for k, v in init.items() if "lora_B" in k)

    zero = train.train_lora(copy.deepcopy(base), tok, ITEMS, [0.0] * len(ITEMS), {"name": "kaft", "rewards":
                            [0, 0, 0, 0]}, cfg, tmp_path / "zero", seed=7, domain="general")
    after = lora_state(zero)
    assert after.keys() == init.keys()
    assert all(torch.equal(after[k], init[k]) for k in init)

    one = train.train_lora(copy.deepcopy(base), tok, ITEMS, [1.0] * len(ITEMS), {"name": "constant"}, cfg,
                           tmp_path / "one", seed=7, domain="general")
    changed = lora_state(one)
    assert any(not torch.equal(changed[k], init[k]) for k in init)
    assert any(torch.count_nonzero(v) > 0 for k, v in changed.items() if "lora_B" in k)


@pytest.mark.parametrize("loss_cfg", [
    {"name": "kaft", "alpha": 0.5, "beta": 0.5},
    {"name": "eaft", "eaft_alpha": 1.0, "top_k": 20},
    {"name": "kaft_eaft", "alpha": 0.5, "beta": 0.5, "eaft_alpha": 1.0, "top_k": 20, "normalize": "lnk"},
    {"name": "dft"},
], ids=lambda c: c["name"])
def test_train_lora_end_to_end(tok, tmp_path, loss_cfg):
    from peft import PeftModel

    base = make_model(len(tok))
    before = batch_loss(base, tok, {"name": "constant"})
    weights = losses.sample_weights(loss_cfg, [0, 1, 2, 3, 0, 1, 2, 3], [0.5] * 8, 4)
    out = tmp_path / "adapter"
    model = train.train_lora(base, tok, ITEMS, weights, loss_cfg, train_cfg(epochs=15, warmup_ratio=0.1,
                             lr_scheduler="cosine", grad_accum=2, batch_size=2, lr=3e-2), out, seed=0, domain="general")
    assert isinstance(model, PeftModel) and not model.training
    assert (out / "adapter_config.json").exists()
    assert (out / "adapter_model.safetensors").exists() or (out / "adapter_model.bin").exists()
    after = batch_loss(model, tok, {"name": "constant"})
    assert after < before - 0.25, (before, after)  # measured: 4.13 -> 3.53 (kaft), 3.49 (eaft)
    log = json.loads((out / "train_log.json").read_text())
    assert log["global_step"] == 15 * 2  # 8 items / (2 per batch * 2 accumulated) = 2 steps per epoch
    losses_logged = [h["loss"] for h in log["log_history"] if "loss" in h]
    if loss_cfg["name"] != "dft":  # p * CE rises while p < 1/e: DFT's own loss goes up as the CE goes down
        assert sum(losses_logged[-4:]) < sum(losses_logged[:4])


def test_train_lora_rejects_bad_weights(tok, tmp_path):
    base = make_model(len(tok))
    with pytest.raises(ValueError, match="8 items but 7 weights"):
        train.train_lora(base, tok, ITEMS, [1.0] * 7, {"name": "constant"}, train_cfg(), tmp_path, 0, "general")
    with pytest.raises(ValueError, match="item 2"):
        train.train_lora(base, tok, ITEMS, [1, 1, -1, 1, 1, 1, 1, 1], {"name": "constant"}, train_cfg(), tmp_path,
                         0, "general")


# ----------------------------------------------------------------------------------------------- dpo
def _records(items, answers_by_item):
    return [{"id": it.id, "score": 0.0, "gold": it.answer, "orders": [[0, 1, 2, 3]], "answers": [ans]}
            for it, ans in zip(items, answers_by_item)]


def _peft_with_random_adapter(tok, seed=0):
    from peft import get_peft_model

    base = make_model(len(tok), seed)
    ref = copy.deepcopy(base)
    model = get_peft_model(base, train.lora_config(train_cfg()["lora"]))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, ref


def _pairs(n=3):
    from kaft.losses.pairs import build_pairs

    # item i answered wrong with option (gold + 1) % 4 twice and (gold + 2) % 4 once
    answers = [[(it.answer + 1) % 4, (it.answer + 1) % 4, (it.answer + 2) % 4, it.answer] for it in ITEMS[:n]]
    return build_pairs(ITEMS[:n], _records(ITEMS[:n], answers), "dataset_self", 8, seed=0, domain="general")


def test_dpo_batch_loss_equals_closed_form_and_shared_rows_change_nothing(tok):
    model, ref = _peft_with_random_adapter(tok)
    pairs = _pairs(3)
    assert len(pairs) == 6
    rows = train.build_pair_examples(tok, pairs, [0.1, 0.5, 1.0], 256)
    shared = train.PairCollator(tok.pad_token_id)(rows)
    separate = train.PairCollator(tok.pad_token_id, share=False)(rows)
    assert shared["input_ids"].shape[0] == 6 and separate["input_ids"].shape[0] == 12  # one-letter answers share
    beta = 0.3
    with torch.no_grad():
        got = {(share, sl): train.dpo_batch_loss(model, b, beta, sl)[0].item()
               for share, b in (("shared", shared), ("separate", separate)) for sl in (True, False)}

        # by hand: log p(answer letter | prompt) under the adapted model and under a separate copy of the base model
        def letter_logp(m, prompt, letter):
            ids, _ = train.encode_example(tok, prompt, letter, 256)
            logits = m(input_ids=torch.tensor([ids])).logits[0, -2]
            return torch.log_softmax(logits.double(), -1)[ids[-1]].item()

        want = 0.0
        for p in pairs:
            delta = (letter_logp(model, p["prompt"], p["chosen"]) - letter_logp(ref, p["prompt"], p["chosen"])) - \
                    (letter_logp(model, p["prompt"], p["rejected"]) - letter_logp(ref, p["prompt"], p["rejected"]))
            want += [0.1, 0.5, 1.0][p["index"]] * -math.log(1.0 / (1.0 + math.exp(-beta * delta)))
        want /= len(pairs)
    assert abs(want - math.log(2) * (0.1 + 0.5 + 1.0) * 2 / 6) > 1e-3  # the adapter really moves the policy
    for key, value in got.items():
        assert value == pytest.approx(want, abs=1e-5), key


def test_pair_collator_two_token_answers_take_two_rows(tok):
    rows = [{"chosen_ids": [5, 6, 7, 8], "chosen_labels": [-100, -100, 7, 8],
             "rejected_ids": [5, 6, 9, 8], "rejected_labels": [-100, -100, 9, 8], "weights": 1.0},
            {"chosen_ids": [5, 6, 7], "chosen_labels": [-100, -100, 7],
             "rejected_ids": [5, 6, 9], "rejected_labels": [-100, -100, 9], "weights": 0.5}]
    b = train.PairCollator(pad_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 9, 8], [5, 6, 7, 0]]
    assert b["chosen_row"].tolist() == [0, 2] and b["rejected_row"].tolist() == [1, 2]
    assert b["rejected_labels"].tolist() == [[-100, -100, 9, 8], [-100, -100, 9, -100]]
    assert b["attention_mask"].tolist()[2] == [1, 1, 1, 0]
    assert torch.allclose(b["weights"], torch.tensor([1.0, 0.5]))


def test_train_lora_dpo_changes_adapter_and_prefers_chosen(tok, tmp_path):
    from peft import PeftModel

    base = make_model(len(tok))
    untouched = copy.deepcopy(base)
    answers = [[3 if it.answer != 3 else 0] * 3 + [it.answer] for it in ITEMS]  # a learnable preference: not D
    answers[5] = [ITEMS[5].answer] * 4                        # always right: no pair
    records = _records(ITEMS, answers)
    cfg = {"name": "dpo", "dpo_beta": 0.5, "pairs": "dataset_self", "pair_source": "detection", "max_pairs": 8,
           "weight_by_subset": False, "alpha": 0.1, "beta": 0.5, "rewards": None}
    out = tmp_path / "dpo"
    model = train.train_lora(base, tok, ITEMS, [1.0] * 8, cfg, train_cfg(epochs=10, lr=5e-2), out, seed=0,
                             domain="general", records=records)
    assert isinstance(model, PeftModel) and not model.training
    assert any(torch.count_nonzero(v) > 0 for k, v in lora_state(model).items() if "lora_B" in k)
    log = json.loads((out / "train_log.json").read_text())
    assert log["n_pairs"] == 7 and log["n_items_with_pairs"] == 7 and log["global_step"] == 10 * 2
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 7
    assert any("reward_accuracy" in h for h in log["log_history"])

    def margin(m):  # mean log p(chosen) - log p(rejected) over the pairs
        rows = train.build_pair_examples(tok, _pairs_from(records), [1.0] * 8, 256)
        b = train.PairCollator(tok.pad_token_id)(rows)
        with torch.no_grad():
            logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        c = losses.sequence_logps(logits, b["chosen_labels"], b["chosen_row"])
        r = losses.sequence_logps(logits, b["rejected_labels"], b["rejected_row"])
        return (c - r).mean().item()

    before, after = margin(untouched), margin(model)
    assert after > before + 0.4, (before, after)  # measured: -0.14 -> 0.58


def _pairs_from(records):
    from kaft.losses.pairs import build_pairs

    return build_pairs(ITEMS, records, "dataset_self", 8, seed=0, domain="general")


def test_train_lora_dpo_needs_records_with_wrong_samples(tok, tmp_path):
    cfg = {"name": "dpo"}
    base = make_model(len(tok))
    with pytest.raises(ValueError, match="no records were passed"):
        train.train_lora(base, tok, ITEMS, [1.0] * 8, cfg, train_cfg(), tmp_path, 0, "general")
    exact = [{"id": it.id, "score": 0.5, "gold": it.answer, "orders": [[0, 1, 2, 3]], "probs": [[0.25] * 4]}
             for it in ITEMS]
    with pytest.raises(ValueError, match="no record has any.*estimator=sample"):
        train.train_lora(base, tok, ITEMS, [1.0] * 8, cfg, train_cfg(), tmp_path, 0, "general", records=exact)
    right = _records(ITEMS, [[it.answer] * 3 for it in ITEMS])
    with pytest.raises(ValueError, match="no item has both a chosen and a wrong sampled answer"):
        train.train_lora(base, tok, ITEMS, [1.0] * 8, cfg, train_cfg(), tmp_path, 0, "general", records=right)
    # other losses ignore records
    train.train_lora(base, tok, ITEMS, [1.0] * 8, {"name": "constant"}, train_cfg(), tmp_path / "c", 0, "general",
                     records=right)


# ----------------------------------------------------------------------------------------------- checkpoints
class _Interrupted(Exception):
    pass


def _interrupt_after_checkpoint(step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # called once checkpoint-<step> is complete
            if state.global_step == step:
                raise _Interrupted(step)

    return Interrupt()


def test_interrupted_training_resumes_from_its_checkpoint_to_the_same_adapter(tok, tmp_path):
    """Killed after step 9 of 30 (mid-epoch: 2 steps per epoch), the resumed run restores the optimizer, scheduler,
    RNG states (LoRA dropout is on) and data order, and ends with the adapter of an uninterrupted run."""
    from safetensors.torch import load_file

    cfg = train_cfg(epochs=15, batch_size=2, grad_accum=2, lr=3e-2, warmup_ratio=0.1, lr_scheduler="cosine",
                    save_steps=3, save_total_limit=1,
                    lora={"r": 4, "lora_alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    weights = [0.1, 0.5, 1.0, 1.0, 0.1, 0.5, 1.0, 1.0]
    base = make_model(len(tok))
    ref = lora_state(train.train_lora(copy.deepcopy(base), tok, ITEMS, weights, {"name": "constant"}, cfg,
                                      tmp_path / "ref", seed=3, domain="general"))  # no checkpoint dir: none saved
    assert not list((tmp_path / "ref").glob("checkpoint-*"))

    ckpt = tmp_path / "scratch"
    with pytest.raises(_Interrupted):
        train.train_lora(copy.deepcopy(base), tok, ITEMS, weights, {"name": "constant"}, cfg, tmp_path / "a",
                         seed=3, domain="general", checkpoint_dir=ckpt, callbacks=[_interrupt_after_checkpoint(9)])
    assert [p.name for p in ckpt.glob("checkpoint-*")] == ["checkpoint-9"]  # save_total_limit=1
    saved = sorted(p.name for p in (ckpt / "checkpoint-9").iterdir())
    assert "adapter_model.safetensors" in saved and "trainer_state.json" in saved
    # weights as safetensors; optimizer.pt / scheduler.pt / rng_state.pth are torch files the Trainer loads with
    # weights_only=True, training_args.bin is a pickle it writes for reference and never loads
    assert not [n for n in saved if n.endswith((".bin", ".pt", ".pth")) and "model" in n], saved
    (ckpt / "checkpoint-12").mkdir()  # a checkpoint cut off while it was saved: no trainer_state.json
    (ckpt / "checkpoint-12" / "adapter_model.safetensors").write_bytes(b"")
    assert train.last_checkpoint(ckpt) == ckpt / "checkpoint-9" and not (ckpt / "checkpoint-12").exists()

    from transformers import TrainerCallback

    steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    resumed = train.train_lora(copy.deepcopy(base), tok, ITEMS, weights, {"name": "constant"}, cfg, tmp_path / "b",
                               seed=3, domain="general", checkpoint_dir=ckpt, callbacks=[Count()])
    got = lora_state(resumed)
    assert steps == list(range(10, 31))  # only the 21 steps after the checkpoint ran
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert log["resumed_from_step"] == 9 and log["global_step"] == 30
    init = lora_state(train.train_lora(copy.deepcopy(base), tok, ITEMS, [0.0] * 8, {"name": "kaft", "rewards":
                      [0, 0, 0, 0]}, train_cfg(), tmp_path / "zero", seed=3, domain="general"))
    assert any((got[k] - init[k]).abs().max() > 1e-2 for k in got)  # it really trained
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6, rtol=1e-5), (k, (got[k] - ref[k]).abs().max())
    on_disk = load_file(tmp_path / "b" / "adapter_model.safetensors")
    ref_disk = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    assert on_disk.keys() == ref_disk.keys()
    assert all(torch.allclose(on_disk[k], ref_disk[k], atol=1e-6, rtol=1e-5) for k in on_disk)


def test_checkpoint_settings_are_validated():
    with pytest.raises(ValueError, match="save_steps"):
        train.validate_train_cfg(train_cfg(save_steps=-1))
    with pytest.raises(ValueError, match="save_total_limit"):
        train.validate_train_cfg(train_cfg(save_total_limit=0))
    train.validate_train_cfg(train_cfg(save_steps=0))
