"""Typed detection settings: the one place that names a detection setting, its default and its check.

``settings()`` output is part of the detect cache key, so :meth:`ProbeSettings.resolve` returns the config's own
values over the defaults *unconverted* (a YAML ``1`` stays ``1``); the typed, converted instance is what detectors
compute with. A detector with settings of its own (MC conversion) subclasses :class:`ProbeSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kaft import fields
from kaft.detection.backends import BACKENDS
from kaft.detection.core import ORDER_SCHEMES, DetectionError
from kaft.fields import choice, flag, integer, number, unchecked
from kaft.prompts import PROMPTS

ESTIMATORS = ("sample", "exact")
_KINDS = {"int": int, "float": float, "bool": bool}  # a YAML 1 for a float setting is converted, not refused


def _prompts() -> list[str]:
    return sorted(PROMPTS)


@dataclass(frozen=True)
class ProbeSettings:
    """The probing settings every detector reads (conf/detection/diversified.yaml documents each)."""

    name: str = unchecked("diversified", help="the detector (DETECTORS registry)")
    estimator: str = choice("sample", ESTIMATORS, help="sample = paper-faithful; exact = expected Score")
    backend: str = choice("hf", BACKENDS, help="hf | vllm")
    prompt: str = choice("kaft", _prompts, help="kaft = App. A.3 layout; ren = Ren et al. (2024) ICL layout")
    num_orders: int = integer(10, 1, help="No: option orders per item")
    num_samples: int = integer(10, 1, help="Nr: sampled responses per order")
    temperature: float = number(
        0.7, 0.0, lo_open=True, hint=" (use detection.response_sampling=false for greedy)", help="sampling temperature"
    )
    shots: int = integer(3, 0, help="k-shot demonstrations drawn from the training set")
    max_new_tokens: int = integer(4, 1, help="response length")
    batch_size: int = integer(16, 1, help="prompts per forward pass")
    diverse_query: bool = flag(True, help="false = the paper's 'w/o diverse query' ablation")
    response_sampling: bool = flag(True, help="false = the paper's 'w/o response sampling' ablation")
    order_scheme: str = choice("random", ORDER_SCHEMES, help="random | cyclic")
    chunk_size: int = integer(512, 1, help="items per saved chunk")
    share_prefix: bool = flag(True, help="encode the shared demonstrations once per batch (hf)")
    confidence_threshold: float = number(0.5, 0.0, 1.0, help="share of samples that makes an answer confident")
    high_conf_threshold: float = number(0.8, 0.0, 1.0, help="tau_c of the high-confidence error flag")
    dtype: str | None = unchecked(None, help="the model dtype for probing (null = the model's)")

    @classmethod
    def keys(cls) -> list[str]:
        return list(fields.keys_of(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return fields.defaults_of(cls)

    @classmethod
    def resolve(cls, cfg: Mapping) -> dict:
        """``cfg`` over the defaults (plain dict); an unknown key is an error, so a typo is not a silent default."""
        plain = dict(cfg)
        extra = sorted(k for k in plain if k not in cls.keys())
        if extra:
            near = fields.suggest(extra[0], cls.keys())
            raise DetectionError(
                f"unknown detection settings {extra} for detection={plain.get('name', cls.name)}"
                + (f"; did you mean detection.{near}?" if near else "")
                + f"; known: {sorted(cls.keys())}"
            )
        return {**cls.defaults(), **plain}

    @classmethod
    def parse(cls, resolved: Mapping) -> ProbeSettings:
        """The typed settings of a :meth:`resolve` dict, checked (field by field, then :meth:`check`)."""
        values = {}
        for f in dataclasses.fields(cls):
            v = resolved[f.name]
            kind = _KINDS.get(str(f.type))
            try:
                values[f.name] = kind(v) if kind is not None else v
            except (TypeError, ValueError):
                raise DetectionError(f"detection.{f.name} must be {f.type}, got {v!r}") from None
        out = fields.parse(cls, values, "detection", DetectionError)
        out.check()
        return out

    def check(self) -> None:
        """Checks across settings (each setting's own check is its field's)."""
