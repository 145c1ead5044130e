"""Typed loss settings: each loss's config keys are the fields of one frozen dataclass.

Why: a field declares its key, default and check in one place, so the keys a loss accepts, the defaults it uses
and the one-line error for a bad value cannot drift apart (they were three hand-kept lists). A ``None`` value
means "the default" (a composed config writes ``null`` for an unset optional key).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable, Collection, Mapping

from kaft.errors import ConfigError
from kaft.registry import Registry


class LossError(ConfigError):
    """An impossible loss setting (printed as one ``kaft: error:`` line)."""


def check_number(loss: str, key: str, value: Any, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float, or a :class:`LossError` naming loss ``loss``'s key ``key`` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise LossError(f"loss {loss}: '{key}' must be a finite number, got {value!r}")
    value = float(value)
    low = lo is not None and (value < lo or (lo_open and value == lo))
    high = hi is not None and (value > hi or (hi_open and value == hi))
    if not (low or high):
        return value
    if hi is None:
        rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise LossError(f"loss {loss}: '{key}' must be {rng}, got {value:g}")
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise LossError(f"loss {loss}: '{key}' must be in {rng}, got {value:g}")


def _check_integer(loss: str, key: str, value: Any, lo: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise LossError(f"loss {loss}: '{key}' ({what}) must be an integer >= {lo}, got {value!r}")
    return value


def _check_choice(loss: str, key: str, value: Any, choices: Registry | Collection[str]) -> str:
    names = choices.names() if isinstance(choices, Registry) else list(choices)
    if not isinstance(value, str) or value not in names:
        raise LossError(f"loss {loss}: unknown {key} {value!r}; choose one of {names}")
    return value


def _check_flag(loss: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise LossError(f"loss {loss}: '{key}' must be true or false, got {value!r}")
    return value


def _field(default: Any, check: Callable | None) -> Any:
    return dataclasses.field(default=default, metadata={"check": check})


def number(default: float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    """A finite float in ``[lo, hi]`` (``lo_open`` / ``hi_open`` exclude an end; ``None`` = unbounded)."""
    return _field(default, partial(check_number, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open))


def integer(default: int, lo: int, what: str) -> Any:
    """An int ``>= lo``; ``what`` says what it counts (it goes into the error)."""
    return _field(default, partial(_check_integer, lo=lo, what=what))


def choice(default: str, choices: Registry | Collection[str]) -> Any:
    """One name of ``choices`` (a :class:`~kaft.registry.Registry`'s names are read when the config is checked)."""
    return _field(default, partial(_check_choice, choices=choices))


def flag(default: bool) -> Any:
    """``true`` or ``false`` (no truthy strings: ``"yes"`` is a typo, not a yes)."""
    return _field(default, _check_flag)


def unchecked(default: Any = None) -> Any:
    """A value checked later by the loss itself (e.g. the reward list, whose length depends on K)."""
    return _field(default, None)


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of a loss with no keys besides ``name``."""


def keys_of(settings_cls: type) -> tuple[str, ...]:
    """The config keys a settings dataclass accepts, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(settings_cls))


def parse(settings_cls: type, loss: str, cfg: Mapping) -> Any:
    """``settings_cls`` filled from ``cfg`` (missing / ``None`` -> the field's default), every field checked.
    Keys ``cfg`` has but the class lacks are the caller's to reject (it knows which other loss owns them)."""
    values = {}
    for f in dataclasses.fields(settings_cls):
        value = cfg.get(f.name)
        value = f.default if value is None else value
        check = f.metadata.get("check")
        values[f.name] = check(loss, f.name, value) if check is not None else value
    return settings_cls(**values)
