"""kaft.train.config: impossible training settings fail before any model loads."""

from __future__ import annotations

import pytest
from helpers.train import train_cfg

from kaft import train

pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_cfg_validation():
    with pytest.raises(ValueError, match="lr_scheduler"):
        train.validate_train_cfg(train_cfg(lr_scheduler="cosine_restarts_typo"))
    with pytest.raises(ValueError, match="warmup_ratio"):
        train.validate_train_cfg(train_cfg(warmup_ratio=1.5))
    with pytest.raises(ValueError, match="missing"):
        train.validate_train_cfg({k: v for k, v in train_cfg().items() if k != "lr"})
    train.validate_train_cfg(train_cfg())


def test_checkpoint_settings_are_validated():
    with pytest.raises(ValueError, match="save_steps"):
        train.validate_train_cfg(train_cfg(save_steps=-1))
    with pytest.raises(ValueError, match="save_total_limit"):
        train.validate_train_cfg(train_cfg(save_total_limit=0))
