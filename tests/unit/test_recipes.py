"""The paper recipes of conf/train/ (``train=ren_full`` ...): each composes with the method it is for, passes the
config check, holds the paper's numbers (the appendix each YAML quotes), and ``train=kaft_lora`` is the default LoRA
training key for key (same train cache key and identity as ``train=lora``)."""

from __future__ import annotations

import pytest
from test_target_keys import PINNED, _cfg, _keys

from kaft import schema

# recipe -> (the method it runs with, the paper's numbers: key -> value, global batch on one process)
RECIPES = {
    # Ren et al. §3.4 / App. A.1: 3 epochs, lr 2e-5, batch 256, full fine-tuning
    "ren_full": ("vanilla", {"finetune": "full", "epochs": 3, "lr": 2e-5}, 256),
    # SMA App. B: full-parameter DPO, lr 1e-6, 1 epoch, batch 128, weight decay 1e-4, cosine
    "sma_full_dpo": (
        "sma_dpo",
        {"finetune": "full", "lr": 1e-6, "epochs": 1, "weight_decay": 1e-4, "lr_scheduler": "cosine"},
        128,
    ),
    # SMA App. B: SFT at lr 2e-6, otherwise as its DPO
    "sma_full_sft": ("sma_sft_self", {"finetune": "full", "lr": 2e-6, "epochs": 1, "weight_decay": 1e-4}, 128),
    # EAFT App. F Table 4: lr 1e-5, cosine, warm-up 0.03, batch 64, 10 epochs, max length 16384
    "eaft_full": (
        "eaft",
        {"finetune": "full", "lr": 1e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.03, "epochs": 10},
        64,
    ),
    # KaFT App. A.2: LoRA, batch 16, lr 1e-4, warm-up 0.1, max length 2048, 1 epoch
    "kaft_lora": (
        "kaft",
        {"finetune": "lora", "lr": 1e-4, "warmup_ratio": 0.1, "max_length": 2048, "epochs": 1},
        16,
    ),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_holds_the_papers_numbers_and_passes_the_check(recipe):
    method, numbers, batch = RECIPES[recipe]
    cfg = _cfg([f"train={recipe}", f"method={method}", "model=llama3_8b", "dataset=medqa"])  # no lr override there
    assert {k: cfg.train[k] for k in numbers} == numbers
    assert cfg.train.batch_size * cfg.train.grad_accum == batch
    schema.check_config(cfg)
    if recipe == "eaft_full":
        assert cfg.train.max_length == 16384


def test_kaft_lora_is_the_default_training(tmp_path):
    for overrides in sorted(PINNED):
        assert _keys(_cfg([*overrides, "train=kaft_lora"]), tmp_path) == PINNED[overrides]


def test_sma_full_dpo_uses_the_precomputed_reference_and_smas_beta():
    cfg = _cfg(["train=sma_full_dpo", "method=sma_dpo"])
    assert cfg.loss.dpo_beta == 0.1 and cfg.train.reference == "auto"
