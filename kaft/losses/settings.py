"""Typed loss settings: each loss's config keys are the fields of one frozen dataclass, in :mod:`kaft.fields`' style.

Why: a field declares its key, default, help and check in one place (the style every config group shares), so the
keys a loss accepts, the defaults it uses and the one-line error for a bad value cannot drift apart. A ``None``
value means "the default" (a composed config writes ``null`` for an unset optional key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaft import fields
from kaft.errors import ConfigError
from kaft.fields import NoSettings, choice, flag, integer, keys_of, number, unchecked

__all__ = [
    "LossError",
    "NoSettings",
    "check_number",
    "choice",
    "flag",
    "integer",
    "keys_of",
    "number",
    "parse",
    "unchecked",
]


class LossError(ConfigError):
    """An impossible loss setting (printed as one ``kaft: error:`` line)."""


def _label(loss: str):
    return lambda key: f"loss {loss}: '{key}'"


def check_number(
    loss: str,
    key: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a float, or a :class:`LossError` naming loss ``loss``'s key ``key`` and the allowed range."""
    try:
        return fields.check_number(_label(loss)(key), value, lo, hi, lo_open, hi_open)
    except ConfigError as e:
        raise LossError(str(e)) from None


def parse(settings_cls: type, loss: str, cfg: Mapping) -> Any:
    """``settings_cls`` filled from ``cfg`` (missing / ``None`` -> the field's default), every field checked.
    Keys ``cfg`` has but the class lacks are the caller's to reject (it knows which other loss owns them)."""
    return fields.parse(settings_cls, cfg, _label(loss), LossError, none_is_default=True)
