"""Paired claims over seeds as statistics: the mean paired difference with a Student-t 95 % interval, and a
three-way verdict. Agreement in sign over a few seeds is no test (3/3 seeds is p = 0.125 one-sided), and a mean
whose spread exceeds it can change sign with the machine (issue 13), so a claim counts as reproduced only when its
interval excludes the paper's threshold on the paper's side."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` paired differences and the half-width of its ``level`` t interval (None with n < 2)."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def text(self) -> str:
        if self.half is None:
            return f"{self.mean:+.1f} (no interval: 1 seed)"
        return f"{self.mean:+.1f} ± {self.half:.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Student-t interval of the mean over seeds: mean ± t_{(1+level)/2, n-1} · s / √n; None without data."""
    n = len(diffs)
    if n == 0:
        return None
    mean = statistics.fmean(diffs)
    if n < 2:
        return Interval(mean, None, 1)
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return Interval(mean, half, n)


def verdict(iv: Interval | None, margin: float = 0.0) -> str:
    """The paper says the difference is > ``margin``: reproduced when the whole interval is above it, contradicted
    when the whole interval is below it, not resolved when it straddles it (or there is one seed only)."""
    if iv is None:
        return "n/a (no results)"
    if iv.half is None:
        return "not resolved (1 seed)"
    if iv.low > margin:
        return "reproduced"
    if iv.high < margin:
        return "contradicted"
    return "not resolved"


def effect(iv: Interval | None, up: str, down: str, flat: str) -> str:
    """A word for a difference that follows its interval: ``up`` / ``down`` only where the interval excludes 0,
    so that explanatory text cannot claim more than the numbers show."""
    if iv is None or iv.half is None or iv.low <= 0 <= iv.high:
        return flat
    return up if iv.low > 0 else down


def adjacent(order: Sequence[str]) -> list[tuple[str, str]]:
    """An ordering ``a > b > c`` as the pairwise claims ``(a, b), (b, c)``, each tested on its own."""
    return list(zip(order, order[1:]))
