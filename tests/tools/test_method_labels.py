"""Rows are labelled by what ran: a results.json whose ``method`` disagrees with the strategy / loss its config says
ran (written before kaft refused such a run) gets the label of what ran, never "Base" for a trained model."""

import json

from analysis import table as T
from analysis.jobs import jobs_frame

ACCS = {"medqa": 0.797, "medmcqa": 0.70}
BASE = {"medqa": 0.625, "medmcqa": 0.60}


def _metrics(accs):
    return {"benchmarks": {b: {"acc": a, "n": 100} for b, a in accs.items()}, "average": sum(accs.values()) / len(accs)}


def _results(method, strategy, loss, accs):
    """A hand-written results.json as kaft wrote it for ``method=<method> strategy=<strategy> loss=<loss>``."""
    cfg = {
        "method": method,
        "loss": {"name": loss},
        "alpha": None,
        "beta": None,
        "partition": {"k": 4},
        "strategy": {"name": strategy},
        "detection": {"name": "diversified"},
        "seed": 0,
        "model": {"name": "llama3_8b"},
        "dataset": {"name": "medqa"},
    }
    m, b = _metrics(accs), _metrics(BASE)
    return {
        "status": "done",
        "overrides": [f"method={method}", f"strategy={strategy}"],
        "config": cfg,
        "metrics": m,
        "base_metrics": b,
        "delta_vs_base": m["average"] - b["average"],
        "detection": {"mean": 0.6, "std": 0.2, "histogram_10bins": [10] * 10},
    }


def _frame(tmp_path, *jobs):
    for i, job in enumerate(jobs):
        (tmp_path / f"{i}_job").mkdir()
        (tmp_path / f"{i}_job" / "results.json").write_text(json.dumps(job))
    return jobs_frame(tmp_path)


def test_overridden_method_is_labelled_by_what_ran(tmp_path):
    frame = _frame(
        tmp_path, _results("base", "full", "constant", ACCS), _results("no_conflict", "no_conflict", "kaft", ACCS)
    )
    ids = sorted(frame["method_id"])
    assert ids == ["no_conflict+kaft", "vanilla"], ids  # base + strategy=full trained with constant: vanilla SFT
    rows = [r for sec in T.build_table(frame, "2") for r in sec.ours().to_dict("records")]
    trained = [r for r in rows if r["id"] in ("vanilla", "no_conflict+kaft")]
    assert {r["id"] for r in trained} == {"vanilla", "no_conflict+kaft"}, rows
    assert all(r["label"] != "Base" for r in trained), rows
    base = [r for r in rows if r["label"] == "Base"]
    assert all(r["avg"] < 70 for r in base), base  # a Base row, if any, holds the base model's accuracy


def test_method_that_matches_what_ran_keeps_its_label(tmp_path):
    frame = _frame(tmp_path, _results("base", "none", "constant", BASE), _results("kaft", "full", "kaft", ACCS))
    assert sorted(frame["method_id"]) == ["base", "kaft"]
