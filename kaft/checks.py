"""The schemas of the groups without a package of their own (top level, evaluation, partition), the checks of a whole
job config (:func:`check_job`, what :func:`kaft.schema.check_config` runs), and the ``method=`` label check.

Why here: each component package keeps its own schema (train: :mod:`kaft.train.config`, detection:
:mod:`kaft.detection.settings`, each strategy and loss beside its code); this module only walks a composed config
through all of them, in the order a user reads the config, and adds the checks that span groups.
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from kaft import schema
from kaft.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
#: the config groups a composed job holds at its top level (each checked by its own schema)
GROUPS = ("testbed", "dataset", "detection", "partition", "strategy", "loss", "train", "evaluation", "logger",
          "model")
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")


def _check_device(label: str, value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and _DEVICE.match(value)):
        raise ConfigError(f"{label} must be null (cuda if available, else cpu), cpu, cuda, cuda:N or mps, "
                          f"got {value!r}")
    return value


def _check_k(label: str, value: Any) -> int:
    from kaft.partition import PartitionError

    if isinstance(value, bool) or not isinstance(value, int):
        raise PartitionError(f"{label} must be an integer (the number of conflict subsets), got {value!r}")
    if value < 2:
        raise PartitionError(f"{label} must be at least 2, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class TopSettings:
    """The top-level keys of conf/config.yaml (the groups are checked by their own schemas)."""

    seed: int = schema.integer(0, 0, help="the run's seed (on the testbed also its world and pretrained model)")
    alpha: float | None = schema.number(None, nullable=True, help="KaFT's wrong-subset reward / EAFT's exponent")
    beta: float | None = schema.number(None, nullable=True, help="KaFT's might-wrong reward")
    cache_dir: str = schema.text("~/.cache/kaft", help="the shared artifact cache")
    progress: bool = schema.flag(True, help="progress bars")
    force: bool = schema.flag(False, help="re-run a job whose run directory holds a complete results.json")
    device: str | None = schema.unchecked(None, check=_check_device, help="null = cuda if available, else cpu")


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """``evaluation.*`` (conf/evaluation/default.yaml)."""

    batch_size: int = schema.integer(16, 1, help="evaluation batch size")
    limit: int | None = schema.integer(None, 1, nullable=True, hint=" (null evaluates every item)",
                                       help="evaluate only the first N items of each benchmark")
    base: bool = schema.flag(True, help="also evaluate the base model")
    fine_grained: bool = schema.flag(False, help="KaFT Table 1: accuracy per conflict subset of each benchmark")


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """``partition.*`` (conf/partition/): K and the rewards loss=kaft gives each subset (checked by the loss)."""

    k: int = schema.unchecked(4, check=_check_k,
                              help="the number of conflict subsets: split by Score into k even subsets")
    rewards: list | None = schema.unchecked(None, help="what loss=kaft gives each subset, subset 0 first")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _top(cfg: Mapping) -> None:
    known = {*schema.keys_of(TopSettings), *GROUPS}
    for key in cfg:
        if key not in known:
            raise schema.unknown_key_error("", key, known, what="a kaft setting")
    schema.parse(TopSettings, {k: cfg.get(k) for k in schema.keys_of(TopSettings) if k in cfg}, lambda k: k)


def _group(settings_cls: type, group: str, cfg: Mapping) -> Any:
    schema.reject_unknown(settings_cls, group, cfg)
    return schema.parse(settings_cls, cfg, group)


def check_job(cfg: Any) -> list[str]:
    """Every group of a composed job config, checked in order; the first error is raised, the warnings returned."""
    from kaft import detection, losses, strategy
    from kaft.train import validate_train_cfg

    _top(cfg)
    validate_train_cfg(_plain(cfg.train))
    _group(EvaluationSettings, "evaluation", _plain(cfg.evaluation))
    detection.validate(_plain(cfg.detection))
    k = _group(PartitionSettings, "partition", _plain(cfg.partition)).k
    strategy.validate(_plain(cfg.strategy), k)
    losses.validate_loss_cfg(_plain(cfg.loss), k)
    needs = [what for what, yes in (("strategy=" + cfg.strategy.name, strategy.needs_samples(_plain(cfg.strategy))),
                                    ("loss=" + cfg.loss.name, losses.needs_samples(_plain(cfg.loss)))) if yes]
    if needs and not detection.saves_samples(_plain(cfg.detection)):
        raise ConfigError(f"{' and '.join(needs)} needs the model's sampled answers, but detection "
                          f"(estimator={cfg.detection.get('estimator', 'sample')}) saves none; "
                          f"use detection.estimator=sample or detection=icl")
    return warnings(cfg)


def _reads(cfg: Any, key: str) -> bool:
    """Whether the composed loss takes the top-level ``key`` (its YAML interpolates ``${key}``, directly or through
    ``partition.rewards``)."""
    raw = OmegaConf.to_container(cfg.loss, resolve=False) if isinstance(cfg.loss, DictConfig) else dict(cfg.loss)
    text = repr(raw)
    if "partition.rewards" in text and isinstance(cfg, DictConfig):
        text += repr(OmegaConf.to_container(cfg.partition, resolve=False).get("rewards"))
    return "${" + key + "}" in text


def warnings(cfg: Any) -> list[str]:
    """The config-level plausibility lines: an lr above 1, a top-level alpha/beta the loss does not read, a loss
    that strategy=none never uses."""
    out = []
    lr = cfg.train.lr
    if isinstance(lr, (int, float)) and lr > 1:
        out.append(f"train.lr={lr:g} is above 1: LoRA fine-tuning usually uses 1e-5 .. 1e-3 (KaFT: 1e-4)")
    trains = strategy_trains(_plain(cfg.strategy))
    for key in ("alpha", "beta"):
        if cfg.get(key) is not None and trains and not _reads(cfg, key):
            out.append(f"{key}={cfg.get(key)} is not read by loss={cfg.loss.name}; it changes nothing "
                       f"(alpha/beta feed loss=kaft, kaft_eaft, dpo, and alpha eaft's exponent)")
    if not trains and cfg.loss.name != "constant":
        out.append(f"strategy={cfg.strategy.name}: nothing is trained, loss={cfg.loss.name} is not used")
    return out


def strategy_trains(strategy_cfg: Mapping) -> bool:
    from kaft import strategy

    return strategy.get(strategy_cfg).train


# ----------------------------------------------------------------------------------------------- method= rows
def method_spec(path: Path) -> tuple[dict[str, str], dict]:
    """One ``conf/method/<name>.yaml``: the groups it overrides (``override /strategy: x`` lines of its defaults
    list: ``{"strategy": ..., "loss": ...}``) and the strategy settings it fixes (its ``strategy:`` block)."""
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    groups = {k.split()[-1].strip("/"): v for d in cfg.get("defaults") or [] if isinstance(d, dict)
              for k, v in d.items()}
    return groups, dict(cfg.get("strategy") or {})


@lru_cache(maxsize=None)
def method_table(conf: Path = CONF) -> dict[str, dict[str, str]]:
    """``method -> {"strategy": ..., "loss": ...}`` as conf/method/*.yaml declare them (read from the YAML, so the
    table cannot drift from what ``method=`` composes)."""
    out = {}
    for path in sorted((conf / "method").glob("*.yaml")):
        groups = method_spec(path)[0]
        out[path.stem] = {g: groups[g] for g in ("strategy", "loss") if g in groups}
    return out


def check_method_choices(choices: Mapping[str, Any], conf: Path = CONF) -> None:
    """A ``method=`` row is what ran only when strategy and loss are the method's own (see
    :func:`kaft.schema.check_method`)."""
    method = choices.get("method")
    declared = method_table(conf).get(str(method)) if method not in (None, "null") else None
    if not declared:
        return
    differ = [f"{g}={choices.get(g)}" for g, v in declared.items() if choices.get(g) not in (None, v)]
    if differ:
        own = " ".join(f"{g}={v}" for g, v in declared.items())
        ran = " ".join(f"{g}={choices.get(g, v)}" for g, v in declared.items())
        raise ConfigError(f"method={method} means {own}, but the command line chose {' '.join(differ)}: its rows "
                          f"would be labelled with what did not run; drop method= and give {ran}, or drop "
                          f"{' '.join(differ)}")
