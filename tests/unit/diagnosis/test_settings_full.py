"""The diagnosis and full fine-tuning: refused together, in one line before any model loads (its base-model signals
read the tuned model with its LoRA adapter disabled, which a fully fine-tuned model lacks)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kaft import schema
from kaft.errors import ConfigError

CONF = Path(__file__).resolve().parents[3] / "conf"


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_diagnosis_under_full_fine_tuning_is_refused_in_one_line():
    schema.check_config(_cfg(["diagnosis.enabled=true"]))
    schema.check_config(_cfg(["train=full"]))
    with pytest.raises(ConfigError, match="diagnosis.enabled=true needs train.finetune=lora"):
        schema.check_config(_cfg(["train=full", "diagnosis.enabled=true"]))
