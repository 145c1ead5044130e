"""kaft.strategy: each data strategy keeps exactly the documented rows; validation; per-subset accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from kaft import strategy as st
from kaft.data import MCItem
from kaft.partition import partition, subset_names
from kaft.strategy import StrategyError, accuracy_by_subset, needs_samples, select, trains, validate

K = 4
NAMES = subset_names(K)
CONF = Path(__file__).resolve().parents[3] / "conf" / "strategy"


def _world(n=40, seed=0):
    """n items with 4 options; gold = i % 4; scores i/n, so subset = i * K // n (partition is sorted by score)."""
    items = [
        MCItem(id=f"q{i:03d}", question=f"question {i}", options=["a", "b", "c", "d"], answer=i % 4) for i in range(n)
    ]
    records = []
    for i, it in enumerate(items):
        other = (it.answer + 1) % 4  # the model's favourite wrong option
        # 2 orders x 3 samples: "other" named 4 times, gold once, one unparsable
        answers = [[other, other, -1], [other, it.answer, other]]
        records.append(
            {"id": it.id, "score": i / n, "gold": it.answer, "orders": [[0, 1, 2, 3], [3, 2, 1, 0]], "answers": answers}
        )
    subsets = partition([r["id"] for r in records], [r["score"] for r in records], K, seed)
    weights = [[0.1, 0.5, 1.0, 1.0][s] for s in subsets]
    return items, records, subsets, weights


def _ids(sel):
    return [it.id for it in sel.items]


def _sel(cfg, n=40, seed=0, world=None):
    items, records, subsets, weights = world or _world(n)
    return select(cfg, items, records, subsets, NAMES, weights, seed)


def test_world_partition_is_by_index():
    items, _, subsets, _ = _world(40)
    assert subsets == [i * K // 40 for i in range(40)]


# ----------------------------------------------------------------------------------------------- strategies
def test_full_keeps_everything_aligned():
    items, records, subsets, weights = w = _world()
    sel = _sel({"name": "full"}, world=w)
    assert sel.items == items and sel.weights == weights and sel.subsets == subsets and sel.train
    assert [r["id"] for r in sel.records] == _ids(sel) and sel.indices == list(range(40))
    assert sel.info["n_kept"] == 40 and sel.info["dropped"] == 0 and sel.info["strategy"] == "full"
    assert select(None, items, records, subsets, NAMES, weights, 0).items == items  # no strategy group = full


def test_no_conflict_drops_exactly_the_wrong_subset():
    sel = _sel({"name": "no_conflict"})
    assert _ids(sel) == [f"q{i:03d}" for i in range(10, 40)]
    assert 0 not in sel.subsets and sel.weights == [[0.1, 0.5, 1.0, 1.0][s] for s in sel.subsets]
    assert sel.info["dropped"] == 10 and sel.info["dropped_ids"] == [f"q{i:03d}" for i in range(10)]
    assert sel.info["kept_by_subset"] == {"wrong": 0, "might-wrong": 10, "might-right": 10, "right": 10}


def test_wrong_only_and_named_subsets():
    assert _ids(_sel({"name": "wrong_only"})) == [f"q{i:03d}" for i in range(10)]
    for s, name in enumerate(NAMES):
        sel = _sel({"name": "subset", "subset": name, "data_seed": None})
        assert _ids(sel) == [f"q{i:03d}" for i in range(10 * s, 10 * s + 10)]
        assert set(sel.subsets) == {s}
    assert _ids(_sel({"name": "subset", "subset": "wrong"})) == _ids(_sel({"name": "wrong_only"}))


def test_random_subset_has_the_subset_size_and_is_seeded():
    a = _sel({"name": "subset", "subset": "random", "data_seed": None}, seed=0)
    assert len(a.items) == 10 and a.info["random_size"] == 10
    assert _ids(a) == sorted(_ids(a)) and len(set(_ids(a))) == 10  # original order, no repeats
    assert _ids(_sel({"name": "subset", "subset": "random", "data_seed": None}, seed=0)) == _ids(a)
    assert _ids(_sel({"name": "subset", "subset": "random", "data_seed": 0}, seed=5)) == _ids(a)  # data_seed wins
    draws = {tuple(_ids(_sel({"name": "subset", "subset": "random", "data_seed": s}))) for s in range(5)}
    assert len(draws) == 5
    # uneven split: 42 items, K = 4 -> sizes 11, 11, 10, 10; random takes |subset 0| = 11
    assert len(_sel({"name": "subset", "subset": "random", "data_seed": 1}, world=_world(42)).items) == 11


def test_random_draw_ignores_file_order():
    items, records, subsets, weights = _world()
    rev = select(
        {"name": "subset", "subset": "random", "data_seed": 3},
        items[::-1],
        records[::-1],
        subsets[::-1],
        NAMES,
        weights[::-1],
        0,
    )
    fwd = _sel({"name": "subset", "subset": "random", "data_seed": 3})
    assert sorted(_ids(rev)) == _ids(fwd)


@pytest.mark.parametrize("ratio, n_wrong", [(0.0, 0), (0.25, 3), (0.5, 5), (0.75, 8), (1.0, 10), (0.05, 1)])
def test_wrong_ratio_keeps_rounded_share_of_wrong_plus_all_others(ratio, n_wrong):
    # 0.25 * 10 = 2.5 -> 3 and 0.05 * 10 = 0.5 -> 1: halves round up (Python's round would give 2 and 0)
    sel = _sel({"name": "wrong_ratio", "ratio": ratio, "data_seed": 0})
    wrong = [i for i in _ids(sel) if int(i[1:]) < 10]
    assert len(wrong) == n_wrong == st.n_wrong_kept(ratio, 10)
    assert [i for i in _ids(sel) if int(i[1:]) >= 10] == [f"q{i:03d}" for i in range(10, 40)]
    assert sel.info["wrong_kept"] == n_wrong and sel.info["wrong_total"] == 10
    assert sel.info["kept_by_subset"]["wrong"] == n_wrong and len(sel.items) == 30 + n_wrong


def test_wrong_ratio_seeds_and_nesting():
    def wrong_ids(ratio, ds):
        return {i for i in _ids(_sel({"name": "wrong_ratio", "ratio": ratio, "data_seed": ds})) if int(i[1:]) < 10}

    assert wrong_ids(0.5, 0) == wrong_ids(0.5, 0)  # deterministic
    assert wrong_ids(0.5, 0) != wrong_ids(0.5, 1)  # data_seed changes the rows
    assert wrong_ids(0.3, 7) <= wrong_ids(0.5, 7) <= wrong_ids(0.8, 7)  # nested draws under one seed
    assert _ids(_sel({"name": "wrong_ratio", "ratio": 0.0, "data_seed": 0})) == _ids(_sel({"name": "no_conflict"}))
    assert _ids(_sel({"name": "wrong_ratio", "ratio": 1.0, "data_seed": 0})) == _ids(_sel({"name": "full"}))
    # data_seed null = the run's seed
    a = _ids(_sel({"name": "wrong_ratio", "ratio": 0.5, "data_seed": None}, seed=4))
    assert a == _ids(_sel({"name": "wrong_ratio", "ratio": 0.5, "data_seed": 4}, seed=0))


def test_none_trains_nothing():
    sel = _sel({"name": "none"})
    assert sel.train is False and sel.items == [] and sel.weights == [] and sel.info["n_kept"] == 0
    assert trains({"name": "none"}) is False and trains({"name": "full"}) is True


# ----------------------------------------------------------------------------------------------- self-align
def test_self_align_sets_majority_on_wrong_and_never_touches_others():
    items, records, subsets, weights = w = _world()
    sel = _sel({"name": "self_align", "answer_source": "majority"}, world=w)
    assert sel.indices == list(range(40)) and sel.weights == weights and sel.subsets == subsets
    for old, new, s in zip(items, sel.items, subsets):
        if s == 0:
            assert new.answer == (old.answer + 1) % 4  # the majority (4 of 5 parsable answers)
            assert dataclasses_equal_but_answer(old, new)
        else:
            assert new is old  # never changed, not even copied
    assert sel.info["replaced"] == 10 and sel.info["kept_gold_agrees"] == 0
    assert all(r["gold"] == it.answer for r, it in zip(sel.records, items))  # records keep the original gold
    assert needs_samples({"name": "self_align", "answer_source": "majority"}) and not needs_samples({"name": "full"})


def dataclasses_equal_but_answer(a: MCItem, b: MCItem) -> bool:
    return (a.id, a.question, a.options, a.subject, a.domain, a.meta) == (
        b.id,
        b.question,
        b.options,
        b.subject,
        b.domain,
        b.meta,
    )


def test_self_align_ties_unparsable_and_agreeing():
    items, records, subsets, weights = _world()
    records[0]["answers"] = [[3, 1], [1, 3]]  # tie 1 vs 3 -> lowest index 1 (gold 0)
    records[1]["answers"] = [[-1, -1], [-1, -1]]  # never parsable -> unchanged
    records[2]["answers"] = [[2, 2], [0, -1]]  # majority = gold 2 -> unchanged
    records[12]["answers"] = [[]]  # not wrong: never looked at
    sel = select({"name": "self_align", "answer_source": "majority"}, items, records, subsets, NAMES, weights, 0)
    assert [it.answer for it in sel.items[:3]] == [1, 1, 2]
    assert sel.items[1] is items[1] and sel.items[2] is items[2] and sel.items[12] is items[12]
    assert sel.info["replaced"] == 8 and sel.info["kept_gold_unparsable"] == 1 and sel.info["kept_gold_agrees"] == 1
    assert "q001" not in sel.info["replaced_ids"] and "q000" in sel.info["replaced_ids"]


@pytest.mark.parametrize("answers", [None, [], [[]]])
def test_self_align_without_sampled_answers_is_a_clear_error(answers):
    items, records, subsets, weights = _world()
    for r in records:
        r.pop("answers")
        if answers is not None:
            r["answers"] = answers
    with pytest.raises(StrategyError, match="estimator=sample"):
        select({"name": "self_align", "answer_source": "majority"}, items, records, subsets, NAMES, weights, 0)
    for name in ("full", "no_conflict", "wrong_only"):  # the others do not need them
        select({"name": name}, items, records, subsets, NAMES, weights, 0)


def test_self_align_answer_out_of_range():
    items, records, subsets, weights = _world()
    records[0]["answers"] = [[7, 7]]
    with pytest.raises(StrategyError, match="do not match"):
        select({"name": "self_align", "answer_source": "majority"}, items, records, subsets, NAMES, weights, 0)


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"name": "dpo"}, r"unknown strategy 'dpo'; choose one of \['full', "),
        ({}, "unknown strategy None"),
        (
            {"name": "subset", "subset": "wrongg", "data_seed": None},
            r"not a subset of this partition \(k=4\).*'random'",
        ),
        ({"name": "subset", "data_seed": None}, "not a subset"),
        ({"name": "subset", "subset": "wrong", "data_seed": 1.5}, "data_seed must be an integer"),
        ({"name": "wrong_ratio", "ratio": 1.5, "data_seed": 0}, r"ratio must be in \[0, 1\], got 1.5"),
        ({"name": "wrong_ratio", "ratio": -0.1, "data_seed": 0}, "ratio must be"),
        ({"name": "wrong_ratio", "ratio": "half", "data_seed": 0}, "ratio must be"),
        ({"name": "wrong_ratio", "ratio": True, "data_seed": 0}, "ratio must be"),
        ({"name": "wrong_ratio", "ratio": math.nan, "data_seed": 0}, "ratio must be"),
        ({"name": "wrong_ratio", "data_seed": 0}, "ratio must be"),
        (
            {"name": "wrong_ratio", "ratio": 0.5, "data_seed": 0, "ration": 1},
            r"does not take 'ration'; allowed keys: "
            r"data_seed, ratio",
        ),
        ({"name": "full", "subset": "wrong"}, "does not take 'subset'; it takes no keys"),
    ],
)
def test_validate_errors(cfg, match):
    with pytest.raises(StrategyError, match=match) as e:
        validate(cfg, NAMES)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_validate_takes_k_and_other_partitions():
    validate({"name": "subset", "subset": "subset3", "data_seed": None}, 8)
    with pytest.raises(StrategyError, match="subset1"):
        validate({"name": "subset", "subset": "might-right", "data_seed": None}, 8)
    validate({"name": "subset", "subset": "right"}, 4)


def test_select_rejects_misaligned_inputs():
    items, records, subsets, weights = _world()
    with pytest.raises(StrategyError, match="one of each per item"):
        select({"name": "full"}, items, records, subsets[:-1], NAMES, weights, 0)
    with pytest.raises(StrategyError, match="do not match the training set"):
        select({"name": "full"}, items, records[::-1], subsets, NAMES, weights, 0)


def test_registry_has_the_documented_strategies():
    assert set(st.STRATEGIES) == {
        "full",
        "no_conflict",
        "self_align",
        "subset",
        "wrong_ratio",
        "wrong_only",
        "none",
        "har",
        "inc",
        "self",
        "ren_ratio",
    }


def test_ren_har_inc_self_equal_sizes_and_self_relabels():
    from kaft.data import MCItem

    items = [MCItem(f"i{j}", "q", ["a", "b", "c", "d"], j % 4) for j in range(10)]
    # the model answers items 0..5 right, 6..9 with option (gold + 1) % 4
    recs = [
        {"id": it.id, "score": 1.0, "answers": [[it.answer if j < 6 else (it.answer + 1) % 4]]}
        for j, it in enumerate(items)
    ]
    args = (items, recs, [0] * 10, 4, [1.0] * 10, 0)
    har = st.select({"name": "har", "data_seed": None}, *args)
    inc = st.select({"name": "inc", "data_seed": None}, *args)
    self_ = st.select({"name": "self", "data_seed": None}, *args)
    assert len(har.items) == len(inc.items) == len(self_.items) == 4
    assert all(int(it.id[1:]) < 6 for it in har.items) and [it.id for it in inc.items] == ["i6", "i7", "i8", "i9"]
    for it in self_.items:  # every kept answer is the model's own
        j = int(it.id[1:])
        assert it.answer == (items[j].answer if j < 6 else (items[j].answer + 1) % 4)
    assert st.select({"name": "har", "data_seed": 1}, *args).items != har.items or len(har.items) == 6


def _ren_world(n=20):
    """n items; the model answers 0..7 right, the rest with (gold + 1) % 4; items 3, 9, 10 only at probability 0.4
    (ICL records: ``pred``, ``letter_probs``, ``confident``)."""
    items = [MCItem(f"i{j:02d}", "q", ["a", "b", "c", "d"], j % 4) for j in range(n)]
    recs = []
    for j, it in enumerate(items):
        pred = it.answer if j < 8 else (it.answer + 1) % 4
        top = 0.4 if j in (3, 9, 10) else 0.9
        probs = [(1 - top) / 3] * 4
        probs[pred] = top
        recs.append(
            {
                "id": it.id,
                "score": float(pred == it.answer),
                "pred": pred,
                "letter_probs": probs,
                "answers": [[pred]],
                "confident": top > 0.5,
                "orders": [[0, 1, 2, 3]],
            }
        )
    return items, recs, [0] * n, 4, [1.0] * n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ren_self_is_exactly_inc_with_the_model_answers(seed):
    """Ren et al. §3.3: SELF's queries are exactly INC's (same ids at the same data_seed), answers the model's."""
    items, recs, *rest = _ren_world()
    inc = st.select({"name": "inc", "data_seed": seed}, items, recs, *rest, 0)
    self_ = st.select({"name": "self", "data_seed": seed}, items, recs, *rest, 0)
    har = st.select({"name": "har", "data_seed": seed}, items, recs, *rest, 0)
    assert _ids(self_) == _ids(inc) and len(har.items) == len(inc.items) == 7  # min(7 confident right, 10 wrong)
    assert inc.info["kept_ids_sha256"] == self_.info["kept_ids_sha256"]
    by_id = {r["id"]: r for r in recs}
    assert all(it.answer == by_id[it.id]["pred"] != items[int(it.id[1:])].answer for it in self_.items)
    assert [it.answer for it in inc.items] == [items[int(it.id[1:])].answer for it in inc.items]  # gold kept
    assert self_.info["replaced"] == 7


def test_ren_sets_leave_out_unconfident_answers_unless_told():
    """Ren et al. App. A.1: answers with confidence <= 0.5 are set aside (items 3, 9, 10 here)."""
    items, recs, *rest = _ren_world()
    for name in ("har", "inc", "self"):
        sel = st.select({"name": name, "data_seed": 0}, items, recs, *rest, 0)
        assert not {"i03", "i09", "i10"} & set(_ids(sel)) and sel.info["not_confident"] == 3
    har = st.select({"name": "har", "data_seed": 0}, items, recs, *rest, 0)
    assert sorted(_ids(har)) == ["i00", "i01", "i02", "i04", "i05", "i06", "i07"]
    everything = st.select({"name": "har", "data_seed": 0, "confident_only": False}, items, recs, *rest, 0)
    assert len(everything.items) == 8 and everything.info["not_confident"] == 0
    with pytest.raises(StrategyError, match="confident_only must be true"):
        validate({"name": "inc", "confident_only": "yes"}, 4)


def test_ren_confidence_of_sampled_records_is_the_majority_share():
    items, recs, *rest = _ren_world()
    for r in recs:
        del r["confident"], r["letter_probs"]
    recs[0]["answers"] = [[0, 1], [2, 0]]  # majority 0 (gold) with share 0.5: not > 0.5, set aside
    recs[1]["answers"] = [[1, 1], [1, 0]]  # share 0.75: confident
    sel = st.select({"name": "har", "data_seed": 0}, items, recs, *rest, 0)
    assert sel.info["not_confident"] == 1 and "i00" not in _ids(sel)


def test_self_align_greedy_answer_source():
    """KaFT §4.1 replaces a_i with r_i, §2.2's greedy response to the original query: the argmax letter of the
    identity order, from a ``greedy`` field, ICL's pred, or the exact estimator's probabilities."""
    items, records, subsets, weights = _world()
    for i, r in enumerate(records):
        r.pop("answers")  # greedy needs no sampled answers
        r["greedy"] = (items[i].answer + 2) % 4
    records[0] = {
        "id": "q000",
        "score": 0.0,
        "orders": [[1, 0, 2, 3], [0, 1, 2, 3]],
        "probs": [[0.0, 0.0, 0.0, 1.0], [0.1, 0.2, 0.6, 0.1]],
    }  # identity order is the second: 2
    records[1] = {"id": "q001", "score": 0.0, "pred": 3, "letter_probs": [0.1, 0.1, 0.1, 0.7], "answers": [[3]]}
    records[2]["greedy"] = items[2].answer  # agrees with gold: kept
    sel = select({"name": "self_align", "answer_source": "greedy"}, items, records, subsets, NAMES, weights, 0)
    assert [it.answer for it in sel.items[:3]] == [2, 3, 2] and sel.info["answer_source"] == "greedy"
    assert [it.answer for it in sel.items[3:10]] == [(items[i].answer + 2) % 4 for i in range(3, 10)]
    assert sel.items[10:] == items[10:] and sel.info["kept_gold_agrees"] == 1
    assert (
        not needs_samples({"name": "self_align", "answer_source": "greedy"})
        and st.needs_greedy({"name": "self_align"})
        and not st.needs_greedy({"name": "self_align", "answer_source": "majority"})
    )
    del records[3]["greedy"]
    with pytest.raises(StrategyError, match="holds no greedy answer"):
        select({"name": "self_align"}, items, records, subsets, NAMES, weights, 0)
    with pytest.raises(StrategyError, match="answer_source must be one of"):
        validate({"name": "self_align", "answer_source": "mode"}, 4)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_conf_files_validate_with_k4(path):
    text = path.read_text()
    assert text.startswith("#") and "paper" in text.lower()  # each cites where it comes from
    cfg = yaml.safe_load(text)
    assert cfg["name"] == path.stem
    validate(cfg, 4)
    world = _world()
    if cfg["name"] == "self_align":
        for i, rec in enumerate(world[1]):
            rec["greedy"] = (world[0][i].answer + 1) % 4
    if cfg["name"] in (
        "har",
        "inc",
        "self",
        "ren_ratio",
    ):  # Ren's sets need items the model answers right as well as wrong
        for i, rec in enumerate(world[1]):
            if i % 2:
                rec["answers"] = [[rec["gold"]]]
    _sel(cfg, world=world)  # and select runs on it


def test_conf_files_cover_the_registry():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(st.STRATEGIES)


def test_conf_files_compose_through_hydra():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = CONF.parent
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for path in sorted(CONF.glob("*.yaml")):
            base = compose(config_name="config")
            prefix = "" if "strategy" in base else "+"  # before / after the group joins config.yaml's defaults
            cfg = compose(config_name="config", overrides=[f"{prefix}strategy={path.stem}"])
            validate(OmegaConf.to_container(cfg.strategy, resolve=True), int(cfg.partition.k))
        over = compose(
            config_name="config",
            overrides=[f"{prefix}strategy=wrong_ratio", "strategy.ratio=0.25", "strategy.data_seed=3"],
        )
        assert OmegaConf.to_container(over.strategy) == {"name": "wrong_ratio", "ratio": 0.25, "data_seed": 3}


# ----------------------------------------------------------------------------------------------- Table 1
def test_accuracy_by_subset_analytic():
    test_ids = ["a", "b", "c", "d", "e", "f", "g"]
    test_subsets = [0, 0, 1, 2, 2, 2, 0]
    rows = [
        {"id": "a", "answer": 1, "pred": 1},
        {"id": "b", "answer": 2, "pred": 0},
        {"id": "c", "answer": 0, "pred": 3},
        {"id": "d", "answer": 3, "pred": 3},
        {"id": "e", "answer": 1, "pred": 1},
        {"id": "f", "answer": 2, "pred": 0},
        {"id": "g", "answer": 0, "pred": 0, "logprobs": [0.0]},
    ]
    out = accuracy_by_subset(rows, test_ids, test_subsets, NAMES)
    assert list(out) == NAMES
    assert out["wrong"] == {"acc": pytest.approx(2 / 3), "n": 3}
    assert out["might-wrong"] == {"acc": 0.0, "n": 1}
    assert out["might-right"] == {"acc": pytest.approx(2 / 3), "n": 3}
    assert out["right"]["n"] == 0 and math.isnan(out["right"]["acc"])
    # a prefix only (evaluation.limit): counts what was evaluated
    assert accuracy_by_subset(rows[:2], test_ids, test_subsets, 4)["wrong"] == {"acc": 0.5, "n": 2}
    with pytest.raises(StrategyError, match="not in the partitioned test set"):
        accuracy_by_subset([{"id": "zz", "answer": 0, "pred": 0}], test_ids, test_subsets, NAMES)
    with pytest.raises(StrategyError, match="7 test ids but 6 subsets"):
        accuracy_by_subset(rows, test_ids, test_subsets[:-1], NAMES)
