"""Ren et al. Exp-III's consistency ratio (strategy=ren_ratio): INC's queries, a share r answered as SELF."""

from __future__ import annotations

import pytest

from kaft import strategy as st
from kaft.data import MCItem
from kaft.strategy import StrategyError, validate


def _world(n=40):
    """n items; the model answers the even ones right and the odd ones with (gold + 1) % 4, all confidently."""
    items = [MCItem(f"i{j:02d}", "q", ["a", "b", "c", "d"], j % 4) for j in range(n)]
    recs = []
    for j, it in enumerate(items):
        pred = it.answer if j % 2 == 0 else (it.answer + 1) % 4
        recs.append({"id": it.id, "score": float(pred == it.answer), "answers": [[pred]], "confident": True})
    return items, recs, [0] * n, 4, [1.0] * n


def _select(name, seed=0, **cfg):
    items, recs, *rest = _world()
    return st.select({"name": name, "data_seed": seed, **cfg}, items, recs, *rest, 0), items


def _pairs(sel):
    return [(it.id, it.answer) for it in sel.items]


@pytest.mark.parametrize("seed", [0, 3])
def test_ratio_0_is_inc_and_ratio_1_is_self(seed):
    """The identities Ren et al.'s Fig. 2 states: ratio 0 = all incompatible, ratio 1 = all self-aligning."""
    assert _pairs(_select("ren_ratio", seed, ratio=0.0)[0]) == _pairs(_select("inc", seed)[0])
    assert _pairs(_select("ren_ratio", seed, ratio=1.0)[0]) == _pairs(_select("self", seed)[0])


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_a_ratio_relabels_that_share_of_incs_queries(ratio):
    sel, items = _select("ren_ratio", 1, ratio=ratio)
    inc, _ = _select("inc", 1)
    assert [it.id for it in sel.items] == [it.id for it in inc.items]  # the same queries at every ratio
    n = len(sel.items)
    relabelled = [it for it in sel.items if it.answer != items[int(it.id[1:])].answer]
    assert len(relabelled) == round(ratio * n) == sel.info["replaced"] and sel.info["ratio"] == ratio
    for it in relabelled:  # the model's own answer, as SELF gives it
        assert it.answer == (items[int(it.id[1:])].answer + 1) % 4


def test_relabelled_shares_are_nested_under_one_seed():
    """A larger ratio relabels a superset of what a smaller one relabels (one seeded ranking), so the ratios of a
    sweep differ only in the answers they add."""

    def relabelled(ratio):
        sel, items = _select("ren_ratio", 2, ratio=ratio)
        return {it.id for it in sel.items if it.answer != items[int(it.id[1:])].answer}

    assert relabelled(0.25) <= relabelled(0.5) <= relabelled(0.75)


@pytest.mark.parametrize("bad", [1.5, -0.1, "half"])
def test_a_ratio_outside_0_1_is_refused_before_any_model(bad):
    with pytest.raises(StrategyError, match="ratio must be"):
        validate({"name": "ren_ratio", "ratio": bad}, 4)
