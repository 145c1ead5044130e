"""train.target leaves the default job where it was: its detect and train cache keys and its identity are pinned
(computed with the code before train.target existed, main at 09f7730), ``train.target`` at its default is left out
of the identity (kaft.identity.NEW_DEFAULTS), and a train key holds the resolved kind only when it is not a letter.
Also the checks that run before any model loads (kaft.schema.check_target) and the training set beside
detection's (kaft.trainset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kaft import identity, schema
from kaft import stages as S
from kaft.errors import ConfigError
from kaft.items import FreeFormItem, MCItem
from kaft.sweep.plan import DryCache, Missing

CONF = Path(__file__).resolve().parents[2] / "conf"
MC = [MCItem(id=f"i{i}", question=f"q{i} ?", options=["x", "y", "z", "w"], answer=i % 4) for i in range(4)]
FREE = [FreeFormItem(id=f"i{i}", question=f"q{i} ?", answer="x") for i in range(4)]
FPS = {"train": "fp-train", "bench_a": "fp-a"}
WEIGHTS = [1.0, 0.5, 0.1, 1.0]

# (detect key, train key, identity sha256[:20]) before train.target: these must not change
PINNED = {
    (): ("2379d3db5abd98eba9cb", "252584ba8f2edd8abf33", "bdaeb925afe94275a9cd"),
    ("loss=eaft",): ("2379d3db5abd98eba9cb", "9a623e44c88136e9d65d", "5cbacfc1cccda9c7af6f"),
    ("model=llama3_8b", "dataset=medqa"): ("e715a46738c22c0a7de9", "c6212f9ff398d81ee4d1", "c7667f3a3ab75d0b24df"),
    ("loss=dpo", "train.lr=2e-4"): ("2379d3db5abd98eba9cb", "506c4d9891d6ea287114", "35d218a52229ee84016c"),
}


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _missing_key(fn) -> str:
    with pytest.raises(Missing) as e:
        fn()
    return e.value.key


def _keys(cfg, tmp_path, items=MC) -> tuple[str, str, str]:
    ctx = S.StageContext(cfg, DryCache(str(tmp_path)), None, "model-id", FPS)
    return (
        _missing_key(lambda: S.stage_detect(ctx, items)),
        _missing_key(lambda: S.stage_train(ctx, items, WEIGHTS, None)),
        identity.make(identity.config_part(cfg, None), FPS, "model-id")["sha256"][:20],
    )


@pytest.mark.parametrize("overrides", sorted(PINNED))
def test_default_keys_and_identity_are_pinned(overrides, tmp_path):
    cfg = _cfg(overrides)
    assert cfg.train.target == "auto"
    assert _keys(cfg, tmp_path) == PINNED[overrides]


def test_explicit_letter_trains_the_same_adapter_and_other_kinds_another(tmp_path):
    detect, train, ident = PINNED[()]
    letter = _keys(_cfg(["train.target=letter"]), tmp_path)
    assert letter[:2] == (detect, train) and letter[2] != ident  # the config says more: the identity says so
    option = _keys(_cfg(["train.target=option"]), tmp_path)
    assert option[0] == detect and option[1] != train
    free = _keys(_cfg(["train.target=response"]), tmp_path, FREE)
    assert free[1] not in (train, option[1])
    assert _keys(_cfg(["train.target=response", "train.response_eos=true"]), tmp_path, FREE)[1] != free[1]


def test_new_defaults_are_dropped_only_at_their_default():
    assert identity.NEW_DEFAULTS["train.target"] == "auto"
    assert not {"target", "response_eos"} & set(identity.config_part(_cfg([]), None)["train"])
    assert identity.config_part(_cfg(["train.response_eos=true"]), None)["train"]["response_eos"] is True
    assert identity.config_part(_cfg(["train.target=option"]), None)["train"]["target"] == "option"
    assert identity.without_new_defaults({"train": {"target": "auto", "lr": 1}}) == {"train": {"lr": 1}}
    assert identity.without_new_defaults({"target": "auto"}, "train") == {}
    assert identity.without_new_defaults({"target": "auto"}, "loss") == {"target": "auto"}


# ----------------------------------------------------------------------------------------------- checks
FREEFORM = ["dataset=testbed_freeform", "detection=mc_conversion"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset=testbed_freeform", "train.target=option"], "train.target=option needs multiple-choice items"),
        ([*FREEFORM, "strategy=self_align"], "strategy=self_align relabels answers"),
        ([*FREEFORM, "strategy=self"], "strategy=self relabels answers"),
        (["train.target=response", "strategy=self_align"], "which train.target=response (a response target)"),
        ([*FREEFORM, "loss=dpo", "loss.pair_source=detection"], "loss.pair_source=detection pairs detection's"),
        (["train.target=response", "loss=dpo"], "compares whole responses only on free-form data"),
        (["train.target=option", "loss=dpo"], "loss=dpo trains on train.target=letter|response, not on option"),
        (["train.target=sentence"], "train.target"),
    ],
)
def test_impossible_targets_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        schema.check_config(_cfg(overrides))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, kind, free",
    [
        ([], "letter", False),
        (FREEFORM, "response", True),
        ([*FREEFORM, "train.target=letter", "strategy=self_align"], "letter", False),  # kaft's reading: MC items
        ([*FREEFORM, "train.target=option"], "option", False),
        ([*FREEFORM, "strategy=har"], "response", True),  # a strategy that only selects works on free-form items
    ],
)
def test_possible_targets_pass(overrides, kind, free):
    cfg = _cfg(overrides)
    schema.check_config(cfg)
    assert schema.trained_target(cfg) == (kind, free)


def test_mc_conversion_trains_on_the_free_form_items_unless_asked_for_letters():
    records = [{"id": it.id, "score": 0.5, "item": MCItem(it.id, it.question, ["x", "y"], 0).to_dict()} for it in FREE]
    records = records[::-1]  # detection's order, not the file's: matched by id
    got = S.training_items(_cfg(FREEFORM), FREE, records)
    assert got == FREE[::-1] and all(isinstance(it, FreeFormItem) for it in got)
    mc = S.training_items(_cfg([*FREEFORM, "train.target=letter"]), FREE, records)
    assert [it.id for it in mc] == [r["id"] for r in records] and all(isinstance(it, MCItem) for it in mc)
    assert S.training_items(_cfg([]), MC, [{"id": it.id} for it in MC]) is MC
    with pytest.raises(ConfigError, match="is not an item of the training set"):
        S.training_items(_cfg(FREEFORM), FREE[:2], records)


def test_train_target_is_read_from_the_adapters_train_log(tmp_path):
    assert S.train_target(None) is None
    (tmp_path / "train_log.json").write_text(json.dumps({"target": "response", "mean_label_tokens": 7.5}))
    assert S.train_target(S.Trained(None, tmp_path)) == {"kind": "response", "mean_label_tokens": 7.5}
    (tmp_path / "train_log.json").write_text(json.dumps({"train_loss": 1.0}))  # an adapter trained before targets
    assert S.train_target(S.Trained(None, tmp_path)) == {"kind": "letter", "mean_label_tokens": None}


def test_the_data_check_resolves_the_target_before_any_model():
    assert S.target_kind(_cfg([]), MC) == "letter" and S.target_kind(_cfg(FREEFORM), FREE) == "response"
    assert S.target_kind(_cfg([*FREEFORM, "train.target=option"]), FREE) is None  # MC conversion's items: later
    with pytest.raises(ConfigError, match="map a response / explanation column with dataset.train.fields.response"):
        S.target_kind(_cfg(["train.target=response"]), MC)
