"""The keys SMA's DPO settings added to conf/loss/dpo.yaml (response_tokens, sft_weight) leave every existing job's
train cache key and identity as they were while at their defaults: a DPO job composed with them equals the job
composed without them (what kaft composed before they existed); set off the default, they enter both."""

from __future__ import annotations

import os
import tempfile

import pytest
from hydra import compose, initialize_config_dir

import kaft.resolvers  # noqa: F401  (the resolvers conf/ interpolates)
from kaft import identity
from kaft import stages as S
from kaft.items import MCItem
from kaft.sweep.plan import DryCache, Missing, _NoModel

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")
ITEMS = [MCItem(id=f"q{i}", question=f"Q{i}?", options=["a", "b", "c", "d"], answer=i % 4) for i in range(4)]
RECORDS = [{"id": f"q{i}", "answers": [[0, 1]]} for i in range(4)]


def _keys(overrides: list[str], records: list | None = RECORDS) -> tuple[str, dict]:
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    ctx = S.StageContext(cfg, DryCache(tempfile.mkdtemp()), _NoModel(), "model-x", {"train": "fp"})
    with pytest.raises(Missing) as m:
        S.stage_train(ctx, ITEMS, [1.0] * 4, records)
    return m.value.key, identity.config_part(cfg, None)


@pytest.mark.parametrize("extra", [[], ["loss.pair_source=detection"]])
def test_new_dpo_keys_at_their_defaults_change_no_key(extra):
    now = _keys(["loss=dpo", *extra])
    before = _keys(["loss=dpo", "~loss.response_tokens", "~loss.sft_weight", *extra])
    assert now == before
    assert "sft_weight" not in now[1]["loss"] and "response_tokens" not in now[1]["loss"]
    changed = _keys(["loss=dpo", "loss.sft_weight=1.0", *extra])
    assert changed[0] != now[0] and changed[1]["loss"]["sft_weight"] == 1.0


def test_default_and_dpo_train_keys_are_the_ones_main_computed_before_these_keys():
    """Computed on main (09f7730) with the same stand-in items, records and model id."""
    assert _keys([], records=None)[0] == "be0dd20334a3c15fee10"
    assert _keys(["loss=dpo"])[0] == "b9e5189a138d54380ce7"
