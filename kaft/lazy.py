"""A module imported on first use, for the few kaft modules whose *definitions* must be importable without torch.

Why: checking a config needs every loss's declarations (its keys, defaults, what it reads), and those live beside
the loss's tensor code. Importing torch costs 1.5-3 s, which a job that is only checked, planned or skipped (its
results already complete) never needs — and would otherwise pay per process. ``torch = LazyModule("torch")`` at
module top reads as the import it stands for; the real import happens at the first attribute access (inside a
function, when a loss is computed), and later accesses are plain attribute reads.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module ``name`` until an attribute is read, then imports it (once: ``sys.modules``)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)  # module attributes do not change: the next read is a plain attribute read
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
