"""Shared inputs of the training tests (tests/unit/train): a tokenizer with BOS over their words, a Llama with
four heads, eight items and the training settings (one epoch, LoRA r=4 on q/v)."""

from __future__ import annotations

import torch

import helpers as tiny
from kaft import losses, train
from kaft.data import MCItem

WORDS = (
    "For the following general question select one correct answer from to Question Options Answer "
    "what colour is sky grass snow sun blue green white yellow red black which animal barks meows "
    "dog cat cow fish how many legs has a spider eight six four two"
).split()


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
    cfg = {
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "epochs": 1,
        "max_length": 256,
        "weight_decay": 0.0,
        "grad_accum": 1,
        "lr_scheduler": "linear",
        "logging_steps": 1,
        "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    cfg.update(over)
    return cfg


#: the DPO loss of the training tests: dataset_self pairs from the detection's sampled answers, unweighted
DPO = {
    "name": "dpo",
    "dpo_beta": 0.5,
    "pairs": "dataset_self",
    "pair_source": "detection",
    "max_pairs": 8,
    "weight_by_subset": False,
    "alpha": 0.1,
    "beta": 0.5,
    "rewards": None,
}


def preference_answers(items=ITEMS) -> list[list[int]]:
    """Per item three sampled answers that are not D (A where D is gold) and one right one: a learnable preference."""
    return [[3 if it.answer != 3 else 0] * 3 + [it.answer] for it in items]


def sampled_records(items, answers_by_item) -> list[dict]:
    """Detection records holding ``answers_by_item`` as each item's sampled answers (one order, score 0)."""
    return [
        {"id": it.id, "score": 0.0, "gold": it.answer, "orders": [[0, 1, 2, 3]], "answers": [ans]}
        for it, ans in zip(items, answers_by_item)
    ]


def spec(loss: dict, cfg: dict, seed: int) -> train.TrainSpec:
    """The :class:`kaft.train.TrainSpec` of a test run (domain "general", no instruction)."""
    return train.TrainSpec(loss=loss, train=cfg, seed=seed, domain="general")


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def batch_loss(model, tok, loss_cfg, items=ITEMS):
    rows = train.build_examples(tok, items, [1.0] * len(items), "general", None, 256)
    batch = train.WeightedCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return losses.compute_loss(loss_cfg, logits, batch["labels"], batch["weights"]).item()
