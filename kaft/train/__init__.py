"""Stage 4 — LoRA or full fine-tuning with the loss a config names (:mod:`kaft.losses`).

``train.finetune`` picks what trains: a LoRA adapter (conf/train/lora.yaml) or every parameter (``train=full``,
conf/train/full.yaml, with its reference model for DPO / SFT_KL: :mod:`~kaft.train.full`).

:func:`train_lora` (:mod:`~kaft.train.lora`) wraps a causal LM in a peft LoRA adapter and trains it with the
:class:`transformers.Trainer` of the feed its loss declares it needs (:mod:`~kaft.train.trainers`): weighted SFT
batches whose loss is :func:`kaft.losses.compute_loss` (:func:`sft_batch_loss`), or preference pairs scored against
the adapter-disabled reference policy (:func:`pair_batch_loss`); SFT batches scored with that reference's logits
too (``needs = "reference"``, SFT_KL: :func:`~kaft.train.trainers.reference_trainer_class`), or SFT examples built from the model's own
correct answers (``needs = "self_answers"``: :mod:`~kaft.train.self_answers`). The examples and collators are in
:mod:`~kaft.train.examples`, the ``train`` config checks in :mod:`~kaft.train.config`. Imports point down:
kaft.train reads kaft.losses, never the reverse.
"""

import importlib

from kaft.train.config import (
    CHECKPOINT_KEYS,
    LR_SCHEDULERS,
    TRAIN_KEYS,
    TrainError,
    TrainSpec,
    is_full,
    key_settings,
    lora_config,
    reference_kind,
    validate_train_cfg,
)

# The training machinery imports torch (and, when it runs, transformers and peft): its names load on first use
# (PEP 562), so that checking a train config -- every job of a sweep, before the first one starts -- costs no torch
# import. ``from kaft.train import train_lora`` works as a plain import would.
_LAZY = {
    "kaft.train.examples": (
        "ListDataset",
        "PairCollator",
        "WeightedCollator",
        "build_examples",
        "build_pair_examples",
        "encode_example",
        "mean_label_tokens",
        "shares_sequence",
        "special_prefix",
    ),
    "kaft.train.full": ("frozen_copy", "load_tuned", "precompute_pair_reference"),
    "kaft.train.lora": ("last_checkpoint", "train_lora"),
    "kaft.train.steps": ("accepts_logits_to_keep", "dpo_batch_loss", "pair_batch_loss", "pair_logps", "sft_batch_loss"),
    "kaft.train.trainers": ("FEEDS", "Feed", "Prepared", "pair_trainer_class", "weighted_trainer_class"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'kaft.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "CHECKPOINT_KEYS",
    "FEEDS",
    "Feed",
    "LR_SCHEDULERS",
    "ListDataset",
    "PairCollator",
    "Prepared",
    "TRAIN_KEYS",
    "TrainError",
    "TrainSpec",
    "WeightedCollator",
    "accepts_logits_to_keep",
    "build_examples",
    "build_pair_examples",
    "dpo_batch_loss",
    "encode_example",
    "frozen_copy",
    "is_full",
    "key_settings",
    "last_checkpoint",
    "load_tuned",
    "lora_config",
    "mean_label_tokens",
    "pair_batch_loss",
    "pair_logps",
    "pair_trainer_class",
    "precompute_pair_reference",
    "reference_kind",
    "sft_batch_loss",
    "shares_sequence",
    "special_prefix",
    "train_lora",
    "validate_train_cfg",
    "weighted_trainer_class",
]
