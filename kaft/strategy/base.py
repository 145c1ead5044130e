"""The parts every data strategy shares: the selection it returns, the context it sees, the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kaft import fields
from kaft.errors import KaftError
from kaft.items import MCItem
from kaft.registry import Registry

WRONG = 0  # subset 0 holds the lowest scores: the items that conflict most with the model
RANDOM = "random"  # ``strategy.subset`` value for a random sample of one subset's size
ID_LIST_LIMIT = 20  # at most this many ids are listed in ``Selection.info`` (the sha256 identifies the full set)


class StrategyError(KaftError):
    """An impossible strategy config, or detection records that cannot feed the strategy; one actionable line."""


@dataclass(frozen=True)
class Selection:
    """What a job trains on: ``items``, ``weights``, ``records``, ``subsets`` and ``indices`` (positions in the
    input) are aligned; ``train`` is False when nothing is trained (``none``); ``info`` is small, for
    results.json (counts, a hash of the kept ids, a few dropped / replaced ids)."""

    items: list[MCItem]
    weights: list[float]
    records: list[dict]
    subsets: list[int]
    indices: list[int]
    train: bool = True
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Everything a strategy may look at (all lists aligned with ``items``)."""

    cfg: Mapping
    items: Sequence[MCItem]
    records: Sequence[Mapping]
    subsets: Sequence[int]
    names: Sequence[str]
    seed: int

    def indices_in(self, subset: int) -> list[int]:
        return [i for i, s in enumerate(self.subsets) if s == subset]

    def data_seed(self) -> int:
        """``strategy.data_seed`` when given, else the run's seed."""
        ds = self.cfg.get("data_seed")
        return self.seed if ds is None else int(ds)


@dataclass(frozen=True)
class Pick:
    """A strategy's answer: the indices to keep, replaced answers ``{index: new answer}``, and extra info."""

    keep: list[int]
    answers: dict[int, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: Callable[[Context], Pick]
    settings: type  # its keys besides ``name``: a kaft.fields settings dataclass
    check: Callable[[Mapping, list[str]], None]  # checks against the partition's subset names (after the fields')
    train: bool = True
    # needs the sampled answers of detection (``records[i]["answers"]``): a flag, or a function of the config
    needs_samples: bool | Callable[[Mapping], bool] = False
    # needs each item's greedy answer to the original query (``records[i]["greedy"]``, kaft.stages probes for it)
    needs_greedy: bool | Callable[[Mapping], bool] = False
    # replaces answers with the model's own option (``Pick.answers``): only multiple-choice items with a letter or
    # option target can take that (kaft.schema refuses it on free-form training and on response targets)
    relabels: bool = False

    @property
    def keys(self) -> frozenset[str]:
        """The config keys it accepts besides ``name``."""
        return frozenset(fields.keys_of(self.settings))

    def declares(self, what: str, cfg: Mapping) -> bool:
        """The flag ``what`` (``needs_samples`` / ``needs_greedy``) for this config."""
        flag = getattr(self, what)
        return bool(flag(cfg)) if callable(flag) else bool(flag)


STRATEGIES: Registry[Strategy] = Registry("strategy", error=StrategyError)


def _no_check(cfg: Mapping, names: list[str]) -> None:
    return None


def register(
    name: str,
    *,
    settings: type = fields.NoSettings,
    check: Callable[[Mapping, list[str]], None] = _no_check,
    train: bool = True,
    needs_samples: bool | Callable[[Mapping], bool] = False,
    needs_greedy: bool | Callable[[Mapping], bool] = False,
    relabels: bool = False,
):
    """Add the decorated ``fn(ctx: Context) -> Pick`` to :data:`STRATEGIES` as ``name``; ``settings`` declares its
    keys (fields made with :mod:`kaft.fields`' helpers: type, default, help and check in one place)."""

    def deco(fn: Callable[[Context], Pick]) -> Callable[[Context], Pick]:
        STRATEGIES.register(name, Strategy(name, fn, settings, check, train, needs_samples, needs_greedy, relabels))
        return fn

    return deco


def data_seed() -> int | None:
    """The ``data_seed`` field every sampling strategy declares."""
    return fields.integer(
        None,
        nullable=True,
        hint=" (null = the run's seed)",
        help="the seed of the strategy's draws (null = the run's seed)",
    )


# ----------------------------------------------------------------------------------------------- helpers
def _rank(seed: int, tag: str, item_id: str) -> str:
    return hashlib.sha256(f"{seed}|{tag}|{item_id}".encode()).hexdigest()


def draw(ctx: Context, pool: Sequence[int], n: int, tag: str, seed: int) -> list[int]:
    """``n`` of the ``pool`` indices, chosen by their seeded hash rank, returned in original order."""
    chosen = sorted(pool, key=lambda i: _rank(seed, tag, ctx.items[i].id))[:n]
    return sorted(chosen)
