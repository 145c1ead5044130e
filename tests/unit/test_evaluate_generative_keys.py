"""The evaluate stage's cache key: a multiple-choice-only evaluation keeps the key it had before generative
evaluation existed (pinned), and the verifier and generation settings enter it only with a free-form benchmark.
Also: fine-grained evaluation skips a free-form benchmark with a note, and print_results shows the metric kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from kaft import stages as S
from kaft.items import FreeFormItem, MCItem
from kaft.job import print_results
from kaft.sweep.plan import DryCache, Missing

CONF = Path(__file__).resolve().parents[2] / "conf"
MC = [MCItem(id="a", question="q ?", options=["x", "y"], answer=0)]
FREE = [FreeFormItem(id="f", question="q ?", answer="x")]
FPS = {"bench_a": "fp-a", "bench_b": "fp-b"}

# computed with the code before generative evaluation (main at c364495): these must not change
PINNED = {
    (): ("f3b4b3812391e6bf7b2d", "877816fc17d0746edf45"),
    ("evaluation.fine_grained=true",): ("20de6e67427efc81f4b1", "773726c7877e72cef99c"),
    ("evaluation.limit=3", "evaluation.batch_size=2"): ("e9bf5faa4a05a78c188b", "0a363aab4e7b9e3f72c9"),
    ("model=llama3_8b", "dataset=medqa"): ("7d73994ea742c0961ecc", "605b4f6f57318093cb8f"),
}


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _keys(cfg, evals, tmp_path) -> tuple[str, str]:
    ctx = S.StageContext(cfg, DryCache(str(tmp_path)), None, "model-id", FPS)
    out = []
    for tag in (("base", "model-id"), ("tuned", "train-key")):
        with pytest.raises(Missing) as e:
            S.stage_evaluate(ctx, None, evals, tag, Path("."))
        out.append(e.value.key)
    return tuple(out)


@pytest.mark.parametrize("overrides", sorted(PINNED))
def test_multiple_choice_evaluate_key_is_pinned(overrides, tmp_path):
    assert _keys(_cfg(overrides), {"bench_a": MC, "bench_b": MC}, tmp_path) == PINNED[overrides]
    # generation settings do not reach a multiple-choice evaluation's key
    more = [*overrides, "evaluation.generation.max_new_tokens=5", "evaluation.generation.stop=[.]"]
    assert _keys(_cfg(more), {"bench_a": MC, "bench_b": MC}, tmp_path) == PINNED[overrides]


def test_freeform_key_holds_verifier_and_generation(tmp_path):
    evals = {"bench_a": MC, "bench_b": FREE}
    base = _keys(_cfg([]), evals, tmp_path)
    assert base != PINNED[()]
    assert _keys(_cfg(["evaluation.generation.max_new_tokens=5"]), evals, tmp_path) != base
    assert _keys(_cfg(["evaluation.generation.stop=[.]"]), evals, tmp_path) != base
    assert _keys(_with_verifier({"name": "contains"}), evals, tmp_path) != base
    # the verifier group's default (verifier=exact) is what no verifier config meant before the group existed
    assert _cfg([]).verifier == {"name": "exact"}
    assert _keys(_with_verifier({"name": "exact"}), evals, tmp_path) == base
    without = _cfg([])
    with open_dict(without):
        del without["verifier"]
    assert _keys(without, evals, tmp_path) == base


def _with_verifier(verifier: dict):
    cfg = _cfg([])
    with open_dict(cfg):
        cfg.verifier = verifier
    return cfg


def test_fine_grained_skips_freeform_benchmarks(tmp_path):
    ctx = S.StageContext(_cfg([]), DryCache(str(tmp_path)), None, "model-id", FPS)
    metrics = {"benchmarks": {"bench_b": {"acc": 0.5, "items": []}}, "average": 0.5}
    table, hits = S.fine_grained(ctx, {"bench_b": FREE}, metrics, None, ["wrong", "right"])
    assert table == {"bench_b": {"skipped": S.FREEFORM_FINE_GRAINED}} and hits == {}


def test_print_results_names_the_metric(capsys):
    gen = {
        "acc": 0.25,
        "acc_stderr": 0.1,
        "n": 8,
        "n_judged": 7,
        "no_verdict": 1,
        "metric": "generative",
        "verifier": "exact",
        "exact_match": 0.375,
    }
    metrics = {"benchmarks": {"mc": {"acc": 0.5, "acc_stderr": 0.1, "n": 4}, "free": gen}, "average": 0.375}
    results = {
        "metrics": metrics,
        "base_metrics": None,
        "detection": {"mean": 0.5},
        "subsets": {},
        "cache": {},
        "timings": {},
        "job": {"run_dir": "."},
    }
    print_results(results)
    out = capsys.readouterr().out
    assert "mc                        nan   0.5000  loglik acc" in out
    assert (
        "free                      nan   0.2500  generative, verifier exact (exact_match 0.3750, 1 without verdict)"
        in out
    )
    print_results({**results, "metrics": {"benchmarks": {"mc": metrics["benchmarks"]["mc"]}, "average": 0.5}})
    assert "metric" not in capsys.readouterr().out.splitlines()[0]  # a multiple-choice table is as it was


def test_tracker_gets_the_generative_numbers():
    from kaft.track import summary_metrics

    gen = {"acc": 0.25, "acc_stderr": None, "n": 8, "no_verdict": 1, "metric": "generative", "exact_match": 0.375}
    flat = summary_metrics({"metrics": {"benchmarks": {"free": gen, "mc": {"acc": 0.5, "n": 4}}, "average": 0.375}})
    assert flat["exact_match/free"] == 0.375 and flat["no_verdict/free"] == 1 and flat["acc/free"] == 0.25
    assert "exact_match/mc" not in flat and "metric/free" not in flat
