"""The one settings style of every config group (:mod:`kaft.schema` checks a whole config with them).

Why: a group's keys, defaults, help and checks were kept four ways (loss dataclasses, detection's type table, strategy
``keys=`` / ``check=``, train's key tuple and loops), so an unknown key was silently ignored in some groups and the
same check was written twice. Now each group is one frozen dataclass whose fields are made by :func:`number`,
:func:`integer`, :func:`choice`, :func:`flag`, :func:`text` or :func:`unchecked` (default, help text and check in one
call); :func:`parse` fills and checks one, and an unknown key is an error that suggests the nearest known one. This
module imports no component, so every component can declare its settings with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any

from kaft.errors import ConfigError
from kaft.registry import Registry


def _err(label: str, must: str, value: Any, hint: str) -> ConfigError:
    return ConfigError(f"{label} must be {must}, got {value!r}{hint}")


def _range(lo, hi, lo_open, hi_open) -> str:
    if lo is None and hi is None:
        return "a finite number"
    if hi is None:
        return f"> {lo:g}" if lo_open else f">= {lo:g}"
    if lo is None:
        return f"< {hi:g}" if hi_open else f"<= {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_number(
    label: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a float, or a :class:`ConfigError` naming ``label`` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise _err(
            label,
            "a finite number" + ("" if lo is None and hi is None else f" {_range(lo, hi, lo_open, hi_open)}"),
            value,
            hint,
        )
    value = float(value)
    low = lo is not None and (value < lo or (lo_open and value == lo))
    high = hi is not None and (value > hi or (hi_open and value == hi))
    if low or high:
        raise ConfigError(f"{label} must be {_range(lo, hi, lo_open, hi_open)}, got {value:g}{hint}")
    return value


def _check_integer(label: str, value: Any, lo: int | None, what: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo):
        what = f" ({what})" if what else ""
        raise _err(label + what, "an integer" + (f" >= {lo}" if lo is not None else ""), value, hint)
    return value


def _check_choice(label: str, value: Any, choices: Registry | Collection[str] | Callable, hint: str) -> str:
    names = choices.names() if isinstance(choices, Registry) else list(choices() if callable(choices) else choices)
    if not isinstance(value, str) or value not in names:
        raise _err(label, f"one of {names}", value, hint)
    return value


def _check_flag(label: str, value: Any, hint: str) -> bool:
    if not isinstance(value, bool):
        raise _err(label, "true or false", value, hint)
    return value


def _check_text(label: str, value: Any, hint: str) -> str:
    if not isinstance(value, str) or not value:
        raise _err(label, "a non-empty string", value, hint)
    return value


def _nullable(check: Callable, label: str, value: Any) -> Any:
    return None if value is None else check(label, value)


def _field(default: Any, check: Callable | None, help: str, nullable: bool) -> Any:
    if check is not None and nullable:
        check = partial(_nullable, check)
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return dataclasses.field(**kw, metadata={"check": check, "help": help, "nullable": nullable})


def number(
    default: float | None,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    help: str = "",
    hint: str = "",
    nullable: bool = False,
) -> Any:
    """A finite float in ``[lo, hi]`` (``lo_open`` / ``hi_open`` exclude an end; ``None`` = unbounded)."""
    return _field(
        default, partial(check_number, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, hint=hint), help, nullable
    )


def integer(
    default: int | None,
    lo: int | None = None,
    what: str = "",
    *,
    help: str = "",
    hint: str = "",
    nullable: bool = False,
) -> Any:
    """An int ``>= lo``; ``what`` says what it counts (it goes into the error)."""
    return _field(default, partial(_check_integer, lo=lo, what=what, hint=hint), help or what, nullable)


def choice(
    default: str | None,
    choices: Registry | Collection[str] | Callable,
    *,
    help: str = "",
    hint: str = "",
    nullable: bool = False,
) -> Any:
    """One name of ``choices`` (a :class:`~kaft.registry.Registry`'s names are read when the config is checked)."""
    return _field(default, partial(_check_choice, choices=choices, hint=hint), help, nullable)


def flag(default: bool, *, help: str = "", hint: str = "") -> Any:
    """``true`` or ``false`` (no truthy strings: ``"yes"`` is a typo, not a yes)."""
    return _field(default, partial(_check_flag, hint=hint), help, False)


def text(default: str | None, *, help: str = "", hint: str = "", nullable: bool = False) -> Any:
    """A non-empty string."""
    return _field(default, partial(_check_text, hint=hint), help, nullable)


def unchecked(default: Any = None, *, help: str = "", check: Callable | None = None) -> Any:
    """A value checked by ``check(label, value)``, or later by its reader (e.g. rewards, whose length depends on K)."""
    return _field(default, check, help, True)


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of a component with no keys besides ``name``."""


def keys_of(settings_cls: type) -> tuple[str, ...]:
    """The config keys a settings dataclass accepts, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(settings_cls))


def defaults_of(settings_cls: type) -> dict[str, Any]:
    """Each key's default."""
    return {
        f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        for f in dataclasses.fields(settings_cls)
    }


def help_of(settings_cls: type) -> dict[str, str]:
    """Each key's help text."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(settings_cls)}


def suggest(key: str, known: Collection[str]) -> str:
    """The nearest known key to a typo, or ``""``: a known key spelling the typo's initials (``learning_rate`` ->
    ``lr``) first, else difflib's closest."""
    initials = "".join(w[:1] for w in key.split("_"))
    if "_" in key and initials in known:
        return initials
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return near[0] if near else ""


def unknown_key_error(
    group: str, key: str, known: Collection[str], renamed: Mapping[str, str] | None = None, what: str | None = None
) -> ConfigError:
    """The one line for a key no setting of ``group`` has: a renamed key names its new name, else the nearest."""
    what, at = what or f"a {group} setting", f"{group}." if group else ""
    if renamed and key in renamed:
        return ConfigError(f"{at}{key} is now {at}{renamed[key]}; set {at}{renamed[key]}=... instead")
    near = suggest(key, known)
    fix = f"did you mean {at}{near}?" if near else f"known: {', '.join(sorted(known)) or 'none'}"
    return ConfigError(f"{at}{key} is not {what}; {fix}")


def reject_unknown(
    settings_cls: type,
    group: str,
    cfg: Mapping,
    skip: Collection[str] = (),
    renamed: Mapping[str, str] | None = None,
    error: type[ConfigError] | None = None,
) -> None:
    """Raise for the first key of ``cfg`` (besides ``skip``) that ``settings_cls`` has no field for."""
    known = keys_of(settings_cls)
    for key in cfg:
        if key not in known and key not in skip:
            e = unknown_key_error(group, key, known, renamed)
            raise (error(str(e)) if error is not None else e) from None


def parse(
    settings_cls: type,
    cfg: Mapping,
    label: Callable[[str], str] | str,
    error: type[Exception] = ConfigError,
    none_is_default: bool = False,
) -> Any:
    """``settings_cls`` filled from ``cfg`` (a missing key -> its default; ``None`` too with ``none_is_default``),
    each field checked; ``label`` is the group (``"train"`` -> ``train.lr``) or ``key -> label``. Unknown keys are
    the caller's to reject (:func:`reject_unknown`), since some groups know who owns them."""
    name = label if callable(label) else (lambda key: f"{label}.{key}")
    values, defaults = {}, defaults_of(settings_cls)
    for f in dataclasses.fields(settings_cls):
        value = cfg.get(f.name, defaults[f.name]) if hasattr(cfg, "get") else defaults[f.name]
        value = defaults[f.name] if value is None and none_is_default else value
        check = f.metadata.get("check")
        try:
            values[f.name] = check(name(f.name), value) if check is not None else value
        except ConfigError as e:
            raise (e if isinstance(e, error) else error(str(e))) from None
    return settings_cls(**values)
