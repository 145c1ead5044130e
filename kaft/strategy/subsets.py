"""Strategies that keep or drop items by conflict subset (KaFT Tables 2, 9 and 10; the base rows)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from kaft import fields
from kaft.strategy.base import RANDOM, WRONG, Context, Pick, StrategyError, data_seed, draw, register


@dataclasses.dataclass(frozen=True)
class SubsetSettings:
    subset: str | None = fields.unchecked(None, help="a subset name of the partition, or random")
    data_seed: int | None = data_seed()


@dataclasses.dataclass(frozen=True)
class RatioSettings:
    ratio: float | None = fields.number(
        None, 0.0, 1.0, hint=" (the share of the wrong subset kept)", help="λ: the share of the wrong subset kept"
    )
    data_seed: int | None = data_seed()


def _check_subset(cfg: Mapping, names: list[str]) -> None:
    sub = cfg.get("subset")
    if sub not in (*names, RANDOM):
        raise StrategyError(
            f"strategy.subset={sub!r} is not a subset of this partition (k={len(names)}); "
            f"choose one of {[*names, RANDOM]}"
        )


def n_wrong_kept(ratio: float, n_wrong: int) -> int:
    """round(λ·|wrong|), halves rounded up (not Python's round-half-to-even): ``floor(λ·n + 0.5)``."""
    return min(n_wrong, int(math.floor(float(ratio) * n_wrong + 0.5)))


# ----------------------------------------------------------------------------------------------- strategies
@register("full")
def _full(ctx: Context) -> Pick:
    """Every item: vanilla SFT (``loss=constant``) or KaFT (``loss=kaft``) decide only how each one counts."""
    return Pick(list(range(len(ctx.items))))


@register("no_conflict")
def _no_conflict(ctx: Context) -> Pick:
    """Drop the wrong subset: the usual fix of filtering conflicting data, which KaFT argues wastes it."""
    return Pick([i for i, s in enumerate(ctx.subsets) if s != WRONG])


@register("wrong_only")
def _wrong_only(ctx: Context) -> Pick:
    """Only the wrong subset: the paper's catastrophic case, SFT on the largest conflicts."""
    return Pick(ctx.indices_in(WRONG))


@register("subset", settings=SubsetSettings, check=_check_subset)
def _subset(ctx: Context) -> Pick:
    """One subset by name, or ``random``: the size of subset 0 (the largest when K does not divide N) drawn from
    all items with ``data_seed`` (null: the run's seed), so every row of Table 9 trains on equally many items."""
    sub = ctx.cfg.get("subset")
    if sub == RANDOM:
        n = len(ctx.indices_in(WRONG))
        return Pick(
            draw(ctx, range(len(ctx.items)), n, "subset-random", ctx.data_seed()),
            info={"random_size": n, "data_seed": ctx.data_seed()},
        )
    return Pick(ctx.indices_in(list(ctx.names).index(sub)))


@register("wrong_ratio", settings=RatioSettings)
def _wrong_ratio(ctx: Context) -> Pick:
    """Keep ``n_wrong_kept(λ, |wrong|)`` wrong items, drawn with ``data_seed`` (null: the run's seed), plus every item
    of the other subsets: λ = 0 is ``no_conflict``, λ = 1 is ``full`` (Table 10)."""
    wrong = ctx.indices_in(WRONG)
    n = n_wrong_kept(ctx.cfg["ratio"], len(wrong))
    kept_wrong = set(draw(ctx, wrong, n, "wrong-ratio", ctx.data_seed()))
    keep = [i for i, s in enumerate(ctx.subsets) if s != WRONG or i in kept_wrong]
    return Pick(
        keep,
        info={
            "ratio": float(ctx.cfg["ratio"]),
            "data_seed": ctx.data_seed(),
            "wrong_kept": n,
            "wrong_total": len(wrong),
        },
    )
