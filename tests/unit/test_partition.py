"""Stage 3: even split by score, deterministic seeded tie-breaking."""

import pytest

from kaft.partition import PartitionError, partition, subset_names, subset_sizes


def test_sorted_even_split_with_paper_names():
    ids = [f"i{n}" for n in range(8)]
    scores = [0.9, 0.1, 0.5, 0.0, 1.0, 0.3, 0.7, 0.2]
    sub = partition(ids, scores, 4, seed=0)
    assert sub == [3, 0, 2, 0, 3, 1, 2, 1]
    assert subset_sizes(sub, 4) == {"wrong": 2, "might-wrong": 2, "might-right": 2, "right": 2}
    assert subset_names(2) == ["subset1", "subset2"]


def test_uneven_split_and_monotone_scores():
    ids = [str(n) for n in range(10)]
    scores = [n / 10 for n in range(10)][::-1]
    sub = partition(ids, scores, 3, seed=1)
    assert sorted(subset_sizes(sub, 3).values(), reverse=True) == [4, 3, 3]
    for a in range(10):
        for b in range(10):
            if scores[a] < scores[b]:
                assert sub[a] <= sub[b]


def test_ties_broken_by_seed_deterministically():
    ids = [f"x{n}" for n in range(40)]
    scores = [0.5] * 40
    a, b, c = partition(ids, scores, 4, 0), partition(ids, scores, 4, 0), partition(ids, scores, 4, 1)
    assert a == b and a != c
    assert partition(ids[::-1], scores, 4, 0) == a[::-1]  # file order does not matter


@pytest.mark.parametrize("k, n", [(1, 10), (0, 10), (11, 10)])
def test_impossible_k(k, n):
    with pytest.raises(PartitionError):
        partition([str(i) for i in range(n)], [0.0] * n, k, 0)
