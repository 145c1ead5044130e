"""``diagnosis.*`` (conf/diagnosis/default.yaml): the typed settings of the post-training diagnosis.

The extraction of ILP (seeds/002) lost the values of τ (§3.1.3: "we set τ = _ under BoN-5") and τ_c (Eq. 6), and
never names the sampling temperature of the runs; kaft's choices, each a setting:

* ``n_runs = 5`` — "BoN-5 sampling" and pass@5 (§3.1.3–3.1.4) survived the extraction;
* ``tau = 0.5`` — unlearned when the tuned model recovers the gold option in fewer than half of its runs;
* ``tau_c = 0.8`` — the same τ_c as detection's ``high_conf_threshold`` (one threshold across kaft);
* ``temperature = 0.7`` — the runs are sampled at KaFT's probing temperature (detection's default);
* ``icl_shots = 5`` — Ren et al.'s 5-shot ICL probing (their Table 6 layout) for the base distribution of Exp-IV.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kaft import fields
from kaft.errors import ConfigError


def _check_causes(label: str, value: Any) -> Any:
    """``diagnosis.causes`` checked by the attribution's own schema (:class:`kaft.diagnosis.causes.CauseSettings`)."""
    from kaft.diagnosis.causes import parse_settings  # lazy: the attribution's similarities import numpy

    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{label} must be a mapping of the attribution's settings, got {value!r}")
    parse_settings(value)
    return value


@dataclasses.dataclass(frozen=True)
class DiagnosisSettings:
    """``diagnosis.*``: off by default (adding the group changed no job's identity or cache key)."""

    enabled: bool = fields.flag(False, help="run the diagnosis after training (ILP §3.1, Ren Exp-IV)")
    n_runs: int = fields.integer(5, 1, help="N: independent sampled runs per training item (ILP BoN-5)")
    tau: float = fields.number(0.5, 0.0, 1.0, help="unlearned when the pass@N rate is below tau (ILP §3.1.3)")
    tau_c: float = fields.number(0.8, 0.0, 1.0, help="tau_c of the base model's high-confidence error (ILP Eq. 6)")
    temperature: float = fields.number(0.7, 0.0, lo_open=True, help="sampling temperature of the runs")
    icl_shots: int = fields.integer(5, 0, help="demonstrations of the base model's ICL probe (Ren Exp-IV)")
    batch_size: int = fields.integer(16, 1, help="prompts per forward pass")
    causes: dict | None = fields.unchecked(
        None,
        check=_check_causes,
        help="ILP's five-cause attribution (diagnosis.causes.*: order, similarity, ...; null = ILP's order, defaults)",
    )


def defaults() -> dict[str, Any]:
    return fields.defaults_of(DiagnosisSettings)


def parse(cfg: Mapping | None) -> DiagnosisSettings:
    """The checked settings (a config without the group -- an older results.json -- takes the defaults)."""
    cfg = dict(cfg or {})
    fields.reject_unknown(DiagnosisSettings, "diagnosis", cfg)
    return fields.parse(DiagnosisSettings, cfg, "diagnosis")


def check_training(s: DiagnosisSettings, train: Mapping) -> None:
    """The diagnosis reads the base model as the tuned model with its LoRA adapter disabled (one copy in memory);
    a fully fine-tuned model has no adapter to disable: refused in one line until a base copy is wired in."""
    if s.enabled and (train or {}).get("finetune", "lora") == "full":
        raise ConfigError(
            "diagnosis.enabled=true needs train.finetune=lora: its base-model signals (K(x), JS, Ren's ICL ranking) "
            "read the tuned model with its adapter disabled, which a train=full model does not have"
        )


def key_settings(s: DiagnosisSettings) -> dict[str, Any]:
    """What enters the diagnosis cache key: everything but the switch, the batch size (which change nothing) and the
    attribution's settings (computed from the cached rows on every run: cheap, not cached)."""
    return {k: v for k, v in dataclasses.asdict(s).items() if k not in ("enabled", "batch_size", "causes")}
