"""The ``train`` config: its keys, the checks run before any model loads, and the LoRA config it names.

``train.save_steps`` and ``train.save_total_limit`` (:data:`CHECKPOINT_KEYS`) only decide how often progress is
saved, not the adapter, so the train stage (kaft/stages.py) leaves them out of the train cache key.
"""

from __future__ import annotations

import math
from typing import Mapping

from kaft.errors import ConfigError

TRAIN_KEYS = ("batch_size", "lr", "warmup_ratio", "epochs", "max_length", "weight_decay", "grad_accum",
              "lr_scheduler", "logging_steps", "lora")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
# optional train settings that only decide how often progress is saved, not the adapter (left out of cache keys)
CHECKPOINT_KEYS = ("save_steps", "save_total_limit")
CHECKPOINT_DEFAULTS = {"save_steps": 50, "save_total_limit": 1}


class TrainError(ConfigError):
    """An impossible training setting or training input (printed as one ``kaft: error:`` line)."""


def _check_numbers(train_cfg: Mapping) -> None:
    for key in ("batch_size", "epochs", "max_length", "grad_accum", "logging_steps"):
        v = train_cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TrainError(f"train.{key} must be a positive integer, got {v!r}")
    for key, lo, hi in (("lr", 0.0, None), ("warmup_ratio", 0.0, 1.0), ("weight_decay", 0.0, None)):
        v = train_cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or \
                (hi is not None and v >= hi):
            rng = f"[{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
            raise TrainError(f"train.{key} must be a number in {rng}, got {v!r}")
    for key, lo in (("save_steps", 0), ("save_total_limit", 1)):
        v = train_cfg.get(key, CHECKPOINT_DEFAULTS[key])
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise TrainError(f"train.{key} must be an integer >= {lo}, got {v!r}"
                             + (" (0 turns checkpoints off)" if key == "save_steps" else ""))


def _check_lora(lora: Mapping) -> None:
    for key in ("r", "alpha", "dropout", "target_modules"):
        if key not in lora:
            raise TrainError(f"train.lora is missing '{key}'")
    if isinstance(lora["r"], bool) or not isinstance(lora["r"], int) or lora["r"] < 1:
        raise TrainError(f"train.lora.r must be a positive integer, got {lora['r']!r}")
    if not 0.0 <= float(lora["dropout"]) < 1.0:
        raise TrainError(f"train.lora.dropout must be in [0, 1), got {lora['dropout']!r}")


def validate_train_cfg(train_cfg: Mapping) -> None:
    """Raise :class:`TrainError` (one actionable line) for an impossible training config; call before models
    load."""
    missing = [k for k in TRAIN_KEYS if k not in train_cfg]
    if missing:
        raise TrainError(f"train config is missing {missing}")
    _check_numbers(train_cfg)
    if train_cfg["lr_scheduler"] not in LR_SCHEDULERS:
        raise TrainError(f"train.lr_scheduler must be one of {list(LR_SCHEDULERS)}, got {train_cfg['lr_scheduler']!r}")
    _check_lora(train_cfg["lora"])


def lora_config(lora: Mapping):
    """The peft ``LoraConfig`` of ``train.lora`` (``{r, alpha, dropout, target_modules}``)."""
    from peft import LoraConfig

    targets = lora["target_modules"]
    targets = targets if isinstance(targets, str) else list(targets)  # "all-linear" or a list of module names
    return LoraConfig(task_type="CAUSAL_LM", r=int(lora["r"]), lora_alpha=float(lora["alpha"]),
                      lora_dropout=float(lora["dropout"]), target_modules=targets, bias="none")
