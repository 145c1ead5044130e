"""Typed detection settings: the one place that names a detection setting, its default and its check.

``settings()`` output is part of the detect cache key, so :meth:`ProbeSettings.resolve` returns the config's own
values over the defaults *unconverted* (a YAML ``1`` stays ``1``); the typed, converted instance is what detectors
compute with. A detector with settings of its own (MC conversion) subclasses :class:`ProbeSettings`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from kaft.detection.backends import BACKENDS
from kaft.detection.core import ORDER_SCHEMES, DetectionError
from kaft.prompts import PROMPTS

ESTIMATORS = ("sample", "exact")
_KINDS = {"int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class ProbeSettings:
    """The probing settings every detector reads (conf/detection/diversified.yaml documents each)."""

    name: str = "diversified"
    estimator: str = "sample"
    backend: str = "hf"
    prompt: str = "kaft"
    num_orders: int = 10
    num_samples: int = 10
    temperature: float = 0.7
    shots: int = 3
    max_new_tokens: int = 4
    batch_size: int = 16
    diverse_query: bool = True
    response_sampling: bool = True
    order_scheme: str = "random"
    chunk_size: int = 512
    share_prefix: bool = True
    confidence_threshold: float = 0.5
    high_conf_threshold: float = 0.8
    dtype: str | None = None

    AT_LEAST_ONE: ClassVar[tuple[str, ...]] = ("num_orders", "num_samples", "max_new_tokens", "batch_size",
                                               "chunk_size")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return out

    @classmethod
    def resolve(cls, cfg: Mapping) -> dict:
        """``cfg`` over the defaults (plain dict); an unknown key is an error, so a typo is not a silent default."""
        plain = dict(cfg)
        extra = sorted(k for k in plain if k not in cls.keys())
        if extra:
            raise DetectionError(f"unknown detection settings {extra} for detection={plain.get('name', cls.name)}; "
                                 f"known: {sorted(cls.keys())}")
        return {**cls.defaults(), **plain}

    @classmethod
    def parse(cls, resolved: Mapping) -> "ProbeSettings":
        """The typed settings of a :meth:`resolve` dict, checked."""
        values = {}
        for f in dataclasses.fields(cls):
            v = resolved[f.name]
            kind = _KINDS.get(str(f.type))
            try:
                values[f.name] = kind(v) if kind is not None else v
            except (TypeError, ValueError):
                raise DetectionError(f"detection.{f.name} must be {f.type}, got {v!r}") from None
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise DetectionError(f"detection.estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}")
        if self.backend not in BACKENDS:
            raise DetectionError(f"detection.backend must be one of {BACKENDS.names()}, got {self.backend!r}")
        if self.prompt not in PROMPTS:
            raise DetectionError(f"detection.prompt must be one of {sorted(PROMPTS)}, got {self.prompt!r}")
        if self.order_scheme not in ORDER_SCHEMES:
            raise DetectionError(f"detection.order_scheme must be one of {list(ORDER_SCHEMES)}, "
                                 f"got {self.order_scheme!r}")
        for key in self.AT_LEAST_ONE:
            if getattr(self, key) < 1:
                raise DetectionError(f"detection.{key} must be ≥ 1, got {getattr(self, key)}")
        if self.shots < 0:
            raise DetectionError(f"detection.shots must be ≥ 0, got {self.shots}")
        if not self.temperature > 0:
            raise DetectionError(f"detection.temperature must be > 0 (use detection.response_sampling=false for "
                                 f"greedy), got {self.temperature}")
        for key in ("confidence_threshold", "high_conf_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise DetectionError(f"detection.{key} must be in [0, 1], got {getattr(self, key)}")
