"""Stage 3 — partition: sort items by conflict score and split them evenly into K subsets.

Subset 0 holds the lowest scores (most conflicts). Ties are broken by a seeded random key, so equal scores do
not fall into subsets by file order. When K does not divide N the first subsets get one item more
(``numpy.array_split`` convention).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from kaft.errors import KaftError

FOUR_NAMES = ("wrong", "might-wrong", "might-right", "right")


class PartitionError(KaftError):
    """An impossible partition config."""


def subset_names(k: int) -> list[str]:
    """wrong / might-wrong / might-right / right for K = 4 (the paper's names), ``subset1..K`` otherwise."""
    return list(FOUR_NAMES) if k == 4 else [f"subset{i + 1}" for i in range(k)]


def validate(k: int, n_items: int) -> None:
    if k < 2:
        raise PartitionError(f"partition.k must be at least 2, got {k}")
    if k > n_items:
        raise PartitionError(f"partition.k={k} is larger than the training set ({n_items} items)")


def _tiebreak(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}|{item_id}".encode()).hexdigest()


def partition(ids: Sequence[str], scores: Sequence[float], k: int, seed: int) -> list[int]:
    """The subset index (0 = most conflicts) of each item, aligned with ``ids``."""
    if len(ids) != len(scores):
        raise PartitionError(f"{len(ids)} ids but {len(scores)} scores")
    validate(k, len(ids))
    order = sorted(range(len(ids)), key=lambda i: (scores[i], _tiebreak(seed, ids[i])))
    n = len(ids)
    base, extra = divmod(n, k)
    subsets = [0] * n
    pos = 0
    for s in range(k):
        size = base + (1 if s < extra else 0)
        for i in order[pos : pos + size]:
            subsets[i] = s
        pos += size
    return subsets


def subset_sizes(subsets: Sequence[int], k: int) -> dict[str, int]:
    names = subset_names(k)
    return {names[s]: sum(1 for x in subsets if x == s) for s in range(k)}
