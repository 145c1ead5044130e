"""kaft.schema: one settings style for every config group, the YAML kept in step with it, and check_config (the
whole composed config checked, no data and no model) with its warnings and the method= label check."""

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kaft import fields, schema
from kaft.detection.api import _detector_class
from kaft.errors import ConfigError, KaftError
from kaft.losses import LOSSES
from kaft.strategy import STRATEGIES
from kaft.sweep.plan import Settings as PlanSettings
from kaft.train.config import LoraSettings, TrainSettings

CONF = Path(__file__).resolve().parents[2] / "conf"
_FALLBACK = re.compile(r"^\$\{kaft_default:\$\{\w+\},(.+)\}$")  # a top-level alpha/beta or the loss's own default


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _yaml(path: Path) -> dict:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {k: v for k, v in raw.items() if k not in ("defaults", "name")}


def _value(v):
    """A YAML value as the schema default it stands for: ``${kaft_default:${alpha},0.1}`` is 0.1; any other
    interpolation (rewards from the partition) has no default of its own (None)."""
    if isinstance(v, str) and v.startswith("${"):
        m = _FALLBACK.match(v)
        return yaml.safe_load(m.group(1)) if m else None
    return v


def _in_step(path: Path, settings_cls: type, variant: bool, group: str) -> None:
    """Every key of the YAML is a schema key; unless the YAML is a named variant, each value is the schema's
    default (a default of None is a value the YAML supplies: required, or null = decided at run time)."""
    known, defaults = fields.keys_of(settings_cls), fields.defaults_of(settings_cls)
    raw = _yaml(path)
    assert not set(raw) - set(known), f"{path}: {sorted(set(raw) - set(known))} not in {group}'s schema"
    if variant:
        return
    for key, v in raw.items():
        got = _value(v)
        if got is not None and defaults[key] is not None:
            assert got == defaults[key], f"{path}: {group}.{key}={got!r}, schema default {defaults[key]!r}"


def _files(group):
    return sorted((CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("path", _files("loss"), ids=lambda p: p.stem)
def test_loss_yaml_is_its_schema(path):
    _in_step(path, LOSSES.get(path.stem).Settings, variant=False, group="loss")


@pytest.mark.parametrize("path", _files("strategy"), ids=lambda p: p.stem)
def test_strategy_yaml_is_its_schema(path):
    _in_step(path, STRATEGIES.get(path.stem).settings, variant=False, group="strategy")


@pytest.mark.parametrize("path", _files("detection"), ids=lambda p: p.stem)
def test_detection_yaml_is_its_schema(path):
    name = OmegaConf.load(path).get("name") or "diversified"  # the ablations extend diversified's defaults
    _in_step(path, _detector_class({"name": name}).Settings, variant=path.stem != "diversified", group="detection")


@pytest.mark.parametrize("path", _files("partition"), ids=lambda p: p.stem)
def test_partition_yaml_is_its_schema(path):
    _in_step(path, schema.PartitionSettings, variant=path.stem != "default", group="partition")


def test_train_evaluation_and_top_level_yaml_are_their_schemas():
    train = _yaml(CONF / "train" / "lora.yaml")
    _in_step(CONF / "train" / "lora.yaml", TrainSettings, variant=False, group="train")
    assert train["lora"] == fields.defaults_of(LoraSettings)
    # the optional keys lora.yaml leaves out: gradient checkpointing, and full fine-tuning's reference (not read by LoRA)
    assert set(fields.keys_of(TrainSettings)) - set(train) == {"gradient_checkpointing", "reference"}
    for path in _files("train"):  # train=full and the paper recipes: variants of the same schema
        _in_step(path, TrainSettings, variant=True, group="train")
    _in_step(CONF / "evaluation" / "default.yaml", schema.EvaluationSettings, variant=False, group="evaluation")
    top = _yaml(CONF / "config.yaml")
    top = {k: v for k, v in top.items() if k in fields.keys_of(schema.TopSettings) and k != "cache_dir"}
    assert top == {k: v for k, v in fields.defaults_of(schema.TopSettings).items() if k != "cache_dir"}


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_override_only_train_keys_that_exist(path):
    train = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("train") or {}
    assert not set(train) - set(fields.keys_of(TrainSettings)), path
    assert not set(train.get("lora") or {}) - set(fields.keys_of(LoraSettings)), path


def test_every_group_declares_help_for_every_key():
    classes = [
        TrainSettings,
        LoraSettings,
        schema.EvaluationSettings,
        schema.PartitionSettings,
        schema.TopSettings,
        PlanSettings,
        _detector_class({"name": "mc_conversion"}).Settings,
        *(s.settings for _, s in STRATEGIES.items()),
        *(c.Settings for _, c in LOSSES.items()),
    ]
    for cls in classes:
        missing = [k for k, h in fields.help_of(cls).items() if not h]
        assert not missing, f"{cls.__name__}: no help for {missing}"


# ----------------------------------------------------------------------------------------------- field helpers
def test_unknown_key_suggests_the_nearest_and_renamed_keys_name_the_new_one():
    assert (
        str(fields.unknown_key_error("train", "learning_rate", fields.keys_of(TrainSettings)))
        == "train.learning_rate is not a train setting; did you mean train.lr?"
    )
    assert "did you mean train.warmup_ratio?" in str(
        fields.unknown_key_error("train", "warmup_ration", fields.keys_of(TrainSettings))
    )
    assert (
        str(fields.unknown_key_error("train.lora", "alpha", ["r"], {"alpha": "lora_alpha"}))
        == "train.lora.alpha is now train.lora.lora_alpha; set train.lora.lora_alpha=... instead"
    )
    assert (
        schema.explain_override_error("Could not override 'loss.k'. To append ...")
        == "loss.k is now loss.top_k; set loss.top_k=... instead"
    )
    assert schema.explain_override_error("Could not override 'loss.alpha'. x") == "Could not override 'loss.alpha'. x"


def test_parse_checks_each_field_and_raises_the_groups_error():
    assert fields.parse(schema.EvaluationSettings, {"limit": None}, "evaluation").batch_size == 16
    for bad, says in (
        ({"limit": 0}, "evaluation.limit must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "evaluation.batch_size must be an integer >= 1, got 2.5"),
        ({"base": "yes"}, "evaluation.base must be true or false, got 'yes'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(says)):
            fields.parse(schema.EvaluationSettings, bad, "evaluation")
    with pytest.raises(KaftError, match=r"plan.mfu must be in \(0, 1\], got 2"):
        PlanSettings.parse(["plan.mfu=2"])
    with pytest.raises(KaftError, match="plan.gpu_memory is not a plan setting; did you mean plan.gpu_memory_gb"):
        PlanSettings.parse(["plan.gpu_memory=40"])


# ----------------------------------------------------------------------------------------------- check_config
def test_default_and_every_method_config_pass_without_warnings():
    assert schema.check_config(_compose([])) == []
    for method in schema.method_table():
        assert schema.check_config(_compose([f"method={method}"])) == [], method


BAD = {
    "typo_key": (["+train.learning_rate=0.5"], "train.learning_rate is not a train setting; did you mean train.lr?"),
    "seed_text": (["seed=abc"], "seed must be an integer >= 0, got 'abc'"),
    "seed_negative": (["seed=-1"], "seed must be an integer >= 0, got -1"),
    "train_three_bad": (
        ["train.lr_scheduler=cosine_typo", "train.lora.r=0", "train.warmup_ratio=3"],
        "train.lr_scheduler must be one of",
    ),
    "lora_r": (["train.lora.r=0"], "train.lora.r must be an integer >= 1, got 0"),
    "warmup": (["train.warmup_ratio=3"], "train.warmup_ratio must be in [0, 1), got 3"),
    "epochs_zero": (["train.epochs=0"], "train.epochs must be an integer >= 1, got 0"),
    "lr_zero": (["train.lr=0"], "train.lr must be > 0, got 0"),
    "eval_limit": (["evaluation.limit=0"], "evaluation.limit must be an integer >= 1, got 0"),
    "eval_batch": (["evaluation.batch_size=0"], "evaluation.batch_size must be an integer >= 1, got 0"),
    "eval_unknown": (
        ["+evaluation.limt=3"],
        "evaluation.limt is not a evaluation setting; did you mean evaluation.limit?",
    ),
    "device": (["device=gpu"], "device must be null"),
    "top_unknown": (["+sed=1"], "sed is not a kaft setting; did you mean seed?"),
    "alpha_text": (["alpha=high"], "alpha must be a finite number, got 'high'"),
    "force_text": (["force=yes"], "force must be true or false, got 'yes'"),
    "old_lora_alpha": (["+train.lora.alpha=16"], "train.lora.alpha is now train.lora.lora_alpha"),
    "old_eaft_k": (["loss=eaft", "+loss.k=5"], "loss eaft: 'k' is now 'top_k'"),
    "detection_typo": (["+detection.num_order=3"], "did you mean detection.num_orders?"),
    "strategy_typo": (["strategy=wrong_ratio", "+strategy.ration=1"], "did you mean strategy.ratio?"),
    "partition_k": (["partition.k=1"], "partition.k must be at least 2, got 1"),
    "needs_samples": (["strategy=har", "detection.estimator=exact"], "needs the model's sampled answers"),
}


def test_config_composed_with_its_hydra_node_passes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert schema.check_config(compose(config_name="config", return_hydra_config=True)) == []


@pytest.mark.parametrize("case", list(BAD))
def test_check_config_raises_one_line(case):
    overrides, says = BAD[case]
    with pytest.raises(KaftError) as e:
        schema.check_config(_compose(overrides))
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["train.lr=2"], "train.lr=2 is above 1"),
        (["loss=constant", "alpha=0.5"], "alpha=0.5 is not read by loss=constant"),
        (["loss=eaft", "beta=0.5"], "beta=0.5 is not read by loss=eaft"),
        (["strategy=none", "loss=dpo"], "strategy=none: nothing is trained, loss=dpo is not used"),
        (["method=base", "alpha=0.5"], "alpha=0.5 changes nothing: strategy=none trains nothing"),
    ],
)
def test_check_config_warns_once(overrides, says):
    lines = schema.check_config(_compose(overrides))
    assert len(lines) == 1 and says in lines[0], lines


def test_alpha_that_a_loss_reads_is_no_warning():
    for overrides in (
        ["loss=kaft", "alpha=0.3"],
        ["loss=eaft", "alpha=0.5"],
        ["loss=kaft_eaft", "beta=0.6"],
        ["loss=dpo", "alpha=0.2"],
    ):
        assert schema.check_config(_compose(overrides)) == [], overrides


# ----------------------------------------------------------------------------------------------- method= rows
def test_method_table_is_what_the_method_yaml_composes():
    for method, declared in schema.method_table().items():
        cfg = _compose([f"method={method}"])
        assert declared == {"strategy": cfg.strategy.name, "loss": cfg.loss.name}, method


@pytest.mark.parametrize(
    "choices, says",
    [
        (
            {"method": "base", "strategy": "full", "loss": "constant"},
            "method=base means strategy=none loss=constant, but the command line chose strategy=full",
        ),
        ({"method": "no_conflict", "strategy": "no_conflict", "loss": "kaft"}, "chose loss=kaft"),
    ],
)
def test_overridden_method_is_refused(choices, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        schema.check_method(choices)


def test_method_as_declared_or_no_method_passes():
    schema.check_method({"method": "base", "strategy": "none", "loss": "constant"})
    schema.check_method({"method": None, "strategy": "full", "loss": "kaft"})
    schema.check_method({})
