"""One entry point for config checks: :func:`check_config` (the whole composed config, no data, no model, fast) and
:func:`check_method` (a ``method=`` row is what ran); also the schemas of the groups without a package of their own
(top level, evaluation, partition).

Every group is declared once, in :mod:`kaft.fields`' style, beside the code that reads it: train and LoRA in
:mod:`kaft.train.config`, detection in :mod:`kaft.detection.settings` (+ MC conversion's in
:mod:`kaft.detection.convert`), each strategy beside its function (:mod:`kaft.strategy.subsets`,
:mod:`kaft.strategy.relabel`), each loss beside its class (:mod:`kaft.losses`), ``plan.*`` in
:mod:`kaft.sweep.plan`. This module walks a composed config through all of them, in the order a user reads it, and
adds the checks that span groups. ``kaft.job`` calls :func:`check_config` first thing and the sweep preflight calls it
for every job before the first one runs; the checks that need the data size stay in ``kaft.stages.validate``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kaft import fields
from kaft.diagnosis import settings as diagnosis_settings
from kaft.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
#: the config groups a composed job holds at its top level (each checked by its own schema)
GROUPS = (
    "testbed",
    "dataset",
    "detection",
    "partition",
    "strategy",
    "loss",
    "train",
    "evaluation",
    "diagnosis",
    "verifier",
    "logger",
    "model",
)
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")


def _check_device(label: str, value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and _DEVICE.match(value)):
        raise ConfigError(
            f"{label} must be null (cuda if available, else cpu), cpu, cuda, cuda:N or mps, got {value!r}"
        )
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

    seed: int = fields.integer(0, 0, help="the run's seed (on the testbed also its world and pretrained model)")
    alpha: float | None = fields.number(None, nullable=True, help="KaFT's wrong-subset reward / EAFT's exponent")
    beta: float | None = fields.number(None, nullable=True, help="KaFT's might-wrong reward")
    cache_dir: str = fields.text("~/.cache/kaft", help="the shared artifact cache")
    progress: bool = fields.flag(True, help="progress bars")
    force: bool = fields.flag(False, help="re-run a job whose run directory holds a complete results.json")
    device: str | None = fields.unchecked(None, check=_check_device, help="null = cuda if available, else cpu")


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """``evaluation.*`` (conf/evaluation/default.yaml)."""

    batch_size: int = fields.integer(16, 1, help="evaluation batch size")
    limit: int | None = fields.integer(
        None,
        1,
        nullable=True,
        hint=" (null evaluates every item)",
        help="evaluate only the first N items of each benchmark",
    )
    base: bool = fields.flag(True, help="also evaluate the base model")
    fine_grained: bool = fields.flag(False, help="KaFT Table 1: accuracy per conflict subset of each benchmark")
    generation: dict | None = fields.unchecked(
        None,
        check=lambda label, value: _check_generation(value),
        help="free-form benchmarks' greedy generation: max_new_tokens, stop (kaft.evaluate_generative)",
    )


def _check_generation(value: Any) -> dict:
    from kaft.evaluate_generative import generation_settings  # lazy: the evaluation modules are not config checks'

    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"evaluation.generation must be a mapping (max_new_tokens, stop), got {value!r}")
    return generation_settings(value)


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """``partition.*`` (conf/partition/): K and the rewards loss=kaft gives each subset (checked by the loss)."""

    k: int = fields.unchecked(
        4, check=_check_k, help="the number of conflict subsets: split by Score into k even subsets"
    )
    rewards: list | None = fields.unchecked(None, help="what loss=kaft gives each subset, subset 0 first")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _top(cfg: Mapping) -> None:
    known = {*fields.keys_of(TopSettings), *GROUPS, "hydra"}  # hydra: a config composed with its Hydra node
    for key in cfg:
        if key not in known:
            raise fields.unknown_key_error("", key, known, what="a kaft setting")
    fields.parse(TopSettings, {k: cfg.get(k) for k in fields.keys_of(TopSettings) if k in cfg}, lambda k: k)


def _group(settings_cls: type, group: str, cfg: Mapping) -> Any:
    fields.reject_unknown(settings_cls, group, cfg)
    return fields.parse(settings_cls, cfg, group)


def check_config(cfg: Any) -> list[str]:
    """Check a composed job config (no data, no model, fast): the first error is raised as one line; returns the
    warning lines (legal but implausible settings, settings the chosen components do not read)."""
    from kaft import detection, losses, strategy, verifiers
    from kaft.train import reference_kind, validate_train_cfg

    _top(cfg)
    validate_train_cfg(_plain(cfg.train))
    _group(EvaluationSettings, "evaluation", _plain(cfg.evaluation))
    diag = diagnosis_settings.parse(_plain(cfg.get("diagnosis")))  # kaft.diagnosis.settings: off by default
    diagnosis_settings.check_training(diag, _plain(cfg.train))
    verifiers.validate(_plain(cfg.get("verifier")))  # kaft.verifiers: each verifier's Settings beside its class
    detection.validate(_plain(cfg.detection))
    k = _group(PartitionSettings, "partition", _plain(cfg.partition)).k
    strategy.validate(_plain(cfg.strategy), k)
    losses.validate_loss_cfg(_plain(cfg.loss), k)
    reference_kind(_plain(cfg.train), losses.get_loss(_plain(cfg.loss)).needs)  # full FT's reference (kaft.train)
    needs = [
        what
        for what, yes in (
            ("strategy=" + cfg.strategy.name, strategy.needs_samples(_plain(cfg.strategy))),
            ("loss=" + cfg.loss.name, losses.needs_samples(_plain(cfg.loss))),
        )
        if yes
    ]
    check_target(cfg)
    if needs and not detection.saves_samples(_plain(cfg.detection)):
        raise ConfigError(
            f"{' and '.join(needs)} needs the model's sampled answers, but detection "
            f"(estimator={cfg.detection.get('estimator', 'sample')}) saves none; "
            f"use detection.estimator=sample or detection=icl"
        )
    return warnings(cfg)


def trained_target(cfg: Any) -> tuple[str, bool]:
    """``(kind, free_form)``: the target kind a job trains on as far as the config tells (``train.target`` resolved
    against the data set's format; a multiple-choice ``response`` still needs its field, checked on the data) and
    whether it trains on free-form items. With a detection that converts free-form items to multiple choice
    (``mc_conversion``), ``letter`` / ``option`` train on the converted items (kaft's own reading)."""
    from kaft.detection import DETECTORS
    from kaft.detection.convert import MCConversion

    target = cfg.train.get("target") or "auto"
    if (cfg.dataset.train.get("format") or "mc") != "freeform":
        return ("letter" if target == "auto" else target), False
    if target in ("letter", "option"):
        if not issubclass(DETECTORS.get(cfg.detection.get("name", "diversified")), MCConversion):
            raise ConfigError(
                f"train.target={target} needs multiple-choice items, and dataset.train.format=freeform has none: "
                f"use train.target=response (or auto), or detection=mc_conversion to train on its converted items"
            )
        return target, False
    return "response", True


def check_target(cfg: Any) -> None:
    """What a job trains on against what its strategy and loss can train: a strategy that relabels answers with the
    model's own option (self_align, self) has no option to put in a response, and a loss declares its
    ``targets``; a one-line ConfigError before any model loads."""
    from kaft import losses, strategy

    kind, free = trained_target(cfg)
    if strategy.get(_plain(cfg.strategy)).relabels and kind == "response":
        what = "free-form training" if free else "train.target=response"
        raise ConfigError(
            f"strategy={cfg.strategy.name} relabels answers with the model's own option, which {what} (a response "
            "target) cannot take; use train.target=letter"
            + (" (detection=mc_conversion then trains on the converted items)" if free else "")
            + ", or another strategy"
        )
    loss = losses.get_loss(_plain(cfg.loss))
    if loss.needs == "pairs" and kind == "response" and not free:
        raise ConfigError(
            f"loss={cfg.loss.name} compares whole responses only on free-form data (its own sampled responses); "
            "on multiple-choice data its pairs are answer letters: use train.target=letter"
        )
    if loss.needs == "pairs" and free and cfg.loss.get("pair_source") == "detection":
        raise ConfigError(
            f"loss={cfg.loss.name} loss.pair_source=detection pairs detection's sampled letters, which free-form "
            "training has none of; use loss.pair_source=sma (SMA's sampled responses) or loss.pairs=dataset_dataset"
        )
    if kind not in loss.targets:
        raise ConfigError(
            f"loss={cfg.loss.name} trains on train.target={'|'.join(loss.targets)}, not on {kind}"
            + (" (free-form training)" if free else "")
            + "; set train.target="
            + loss.targets[0]
            + (" with detection=mc_conversion to train on its converted items" if free else "")
        )


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
        if cfg.get(key) is not None and not trains:
            out.append(f"{key}={cfg.get(key)} changes nothing: strategy={cfg.strategy.name} trains nothing")
        elif cfg.get(key) is not None and not _reads(cfg, key):
            out.append(
                f"{key}={cfg.get(key)} is not read by loss={cfg.loss.name}; it changes nothing "
                f"(alpha/beta feed loss=kaft, kaft_eaft, dpo, and alpha eaft's exponent)"
            )
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
    groups = {
        k.split()[-1].strip("/"): v for d in cfg.get("defaults") or [] if isinstance(d, dict) for k, v in d.items()
    }
    return groups, dict(cfg.get("strategy") or {})


@cache
def method_table(conf: Path = CONF) -> dict[str, dict[str, str]]:
    """``method -> {"strategy": ..., "loss": ...}`` as conf/method/*.yaml declare them (read from the YAML, so the
    table cannot drift from what ``method=`` composes)."""
    out = {}
    for path in sorted((conf / "method").glob("*.yaml")):
        groups = method_spec(path)[0]
        out[path.stem] = {g: groups[g] for g in ("strategy", "loss") if g in groups}
    return out


def check_method(choices: Mapping[str, Any], conf: Path = CONF) -> None:
    """Refuse a ``method=`` row whose strategy or loss the command line overrode (its label would name what did
    not run); ``choices`` are Hydra's composed choices (``HydraConfig.get().runtime.choices``)."""
    method = choices.get("method")
    declared = method_table(conf).get(str(method)) if method not in (None, "null") else None
    if not declared:
        return
    differ = [f"{g}={choices.get(g)}" for g, v in declared.items() if choices.get(g) not in (None, v)]
    if differ:
        own = " ".join(f"{g}={v}" for g, v in declared.items())
        ran = " ".join(f"{g}={choices.get(g, v)}" for g, v in declared.items())
        raise ConfigError(
            f"method={method} means {own}, but the command line chose {' '.join(differ)}: its rows "
            f"would be labelled with what did not run; drop method= and give {ran}, or drop "
            f"{' '.join(differ)}"
        )


def renamed_keys() -> dict[str, str]:
    """Old dotted key -> new one, for keys renamed in every group they lived in (``train.lora.alpha``, EAFT's
    ``loss.k``); a key that another loss still has (``loss.alpha``: KaFT's) is not listed."""
    from kaft.losses import LOSSES
    from kaft.train.config import LORA_RENAMED

    out = {f"train.lora.{old}": f"train.lora.{new}" for old, new in LORA_RENAMED.items()}
    current = {key for _, cls in LOSSES.items() for key in cls.keys()}
    for _, cls in LOSSES.items():
        out.update({f"loss.{old}": f"loss.{new}" for old, new in cls.renamed.items() if old not in current})
    return out


def explain_override_error(line: str) -> str:
    """Hydra's one-line error for an override of a key the config lacks, with the key's new name when it was
    renamed (Hydra alone would suggest ``+old=...``, which only leads to the next error)."""
    import re

    m = re.search(r"Could not override '([^']+)'", line) or re.search(
        r"Could not append to config. An item is "
        r"already at '([^']+)'",
        line,
    )
    new = renamed_keys().get(m.group(1)) if m else None
    return f"{m.group(1)} is now {new}; set {new}=... instead" if new else line
