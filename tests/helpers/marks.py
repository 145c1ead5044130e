"""Marks shared by the test files."""

from __future__ import annotations

import pytest


def slow_after_first(cases) -> list:
    """``cases`` for ``parametrize`` with all but the first marked slow. For a family of CLI checks that each cost a
    ``kaft.run`` subprocess (seconds of imports on 2 cores): the quick loop keeps one representative, plain
    ``pytest`` runs them all. Tuples are argument lists (several argnames); node ids are unchanged."""
    cases = list(cases)

    def slow(case):
        return pytest.param(*case if isinstance(case, tuple) else (case,), marks=pytest.mark.slow)

    return [cases[0], *map(slow, cases[1:])]
