"""One registry style for everything a config names: losses, detectors, data strategies, data and model sources,
loggers, diagnostics.

A component registers itself under the name its config uses (``@LOSSES.register("kaft")``); the code that runs it
asks the registry (``LOSSES.get(cfg["name"])``) and reads what the component declares about itself, so no caller
branches on a name. Components outside kaft's own modules (the embedded testbed, a user's package) are *plugins*:
modules named under the ``kaft.plugins`` entry-point group (setup.cfg) are imported the first time a registry is
asked for a name it lacks or for its full list, and register themselves on import.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from importlib import metadata
from typing import Generic, TypeVar

from kaft.errors import ConfigError

T = TypeVar("T")

PLUGIN_GROUP = "kaft.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every module named in the ``kaft.plugins`` entry-point group, once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        importlib.import_module(ep.value.split(":")[0])


class Registry(Generic[T]):
    """Named components of one kind; :meth:`get` of an unknown name is a one-line :class:`ConfigError`."""

    def __init__(self, kind: str, error: type[Exception] = ConfigError):
        self.kind, self.error = kind, error
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """``REG.register("x", obj)``, or as a decorator ``@REG.register("x")``. Registering a different object
        under a taken name is an error unless ``replace`` (tests that swap a component)."""
        if obj is None:
            return lambda o: self.register(name, o, replace=replace)
        if name in self._items and self._items[name] is not obj and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            load_plugins()
        if name not in self._items:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._items[name]

    __getitem__ = get

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        load_plugins()
        return iter(sorted(self._items.items()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"


__all__ = ["PLUGIN_GROUP", "Registry", "load_plugins"]
