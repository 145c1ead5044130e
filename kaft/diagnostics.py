"""Detection diagnostics: extra numbers about a probe's scores that only some data sets can give.

A data set that knows the truth behind its items (the embedded testbed plants contradicting facts) registers a
:class:`Diagnostic`; every registered diagnostic sees each job's detection records, returns ``{}`` when the items
are not its kind, and its numbers join ``results.json``'s ``detection`` block. The pipeline knows none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kaft.items import MCItem
from kaft.registry import Registry


class Diagnostic(Protocol):
    def compute(self, scores: Sequence[float], items: Sequence[MCItem], subsets: Sequence[int]) -> dict:
        """Numbers for ``results.json``'s ``detection`` block, ``{}`` for items it knows nothing about."""

    def headline(self, detection: dict) -> str:
        """A short text for the job's printed summary (``""`` for none)."""


DIAGNOSTICS: Registry[Diagnostic] = Registry("diagnostic")


def compute_all(scores: Sequence[float], items: Sequence[MCItem], subsets: Sequence[int]) -> dict:
    out: dict = {}
    for _, diag in DIAGNOSTICS.items():
        out.update(diag.compute(scores, items, subsets))
    return out


def headlines(detection: dict) -> str:
    return "".join(diag.headline(detection) for _, diag in DIAGNOSTICS.items())
