"""``train.finetune`` / ``train.reference`` (full fine-tuning, kaft.train.full) and ``train.distributed`` leave every LoRA job where it was: the
detect and train cache keys and identities of tests/unit/test_target_keys.py's pinned jobs (computed with the code
before either key existed) hold with ``train=lora`` as composed and with ``train.finetune=lora`` written out
(kaft.defaults.NEW_DEFAULTS). Under ``train=full`` the train key holds the choice and the resolved reference, and
not the LoRA settings a model config gives."""

from __future__ import annotations

import pytest
from test_target_keys import MC, PINNED, _cfg, _keys

from kaft import schema
from kaft.defaults import NEW_DEFAULTS
from kaft.errors import ConfigError


def test_new_defaults_hold_the_keys():
    assert NEW_DEFAULTS["train.finetune"] == "lora" and NEW_DEFAULTS["train.reference"] == "auto"
    assert NEW_DEFAULTS["train.distributed"] == "none"


@pytest.mark.parametrize("overrides", sorted(PINNED))
def test_lora_jobs_keep_their_keys_and_identity(overrides, tmp_path):
    cfg = _cfg(overrides)
    assert cfg.train.finetune == "lora" and "reference" not in cfg.train
    assert _keys(cfg, tmp_path) == PINNED[overrides]
    assert _keys(_cfg([*overrides, "train.finetune=lora"]), tmp_path) == PINNED[overrides]
    assert _keys(_cfg([*overrides, "+train.reference=auto"]), tmp_path) == PINNED[overrides]
    assert _keys(_cfg([*overrides, "train.distributed=none"]), tmp_path) == PINNED[overrides]


def test_full_fine_tuning_has_keys_of_its_own(tmp_path):
    lora = _keys(_cfg([]), tmp_path)
    full = _keys(_cfg(["train=full"]), tmp_path)
    assert full[0] == lora[0]  # detection does not depend on how training trains
    assert full[1] != lora[1] and full[2] != lora[2]
    assert _keys(_cfg(["train=full", "train.lora.r=4"]), tmp_path)[1] == full[1]  # LoRA settings: not read
    dpo = _keys(_cfg(["train=full", "loss=dpo"]), tmp_path, MC)[1]
    assert _keys(_cfg(["train=full", "loss=dpo", "train.reference=precomputed"]), tmp_path, MC)[1] == dpo  # = auto
    assert _keys(_cfg(["train=full", "loss=dpo", "train.reference=copy"]), tmp_path, MC)[1] != dpo
    kl = _keys(_cfg(["train=full", "loss=sft_kl"]), tmp_path)[1]
    assert _keys(_cfg(["train=full", "loss=sft_kl", "train.reference=copy"]), tmp_path)[1] == kl  # = auto


def test_config_checks_before_any_model_loads():
    schema.check_config(_cfg(["train=full", "loss=dpo"]))
    with pytest.raises(ConfigError, match="cannot serve loss=sft_kl"):
        schema.check_config(_cfg(["train=full", "loss=sft_kl", "train.reference=precomputed"]))
    with pytest.raises(ConfigError, match="read only under train.finetune=full"):
        schema.check_config(_cfg(["+train.reference=copy"]))
