"""Extending kaft from outside its source: a toy loss and a toy detector, defined and registered inside this test,
run through a whole job (data → detect → partition → select → train → evaluate → results.json) with no other file
edited. The config names them by key (``loss.name=...``, ``detection.name=...``); validation, the stages and the
results learn of them from the registries alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import tiny_job_args, write_tiny_job
from hydra import compose, initialize_config_dir

import kaft.resolvers  # noqa: F401  (the resolvers conf/ uses)
from kaft import job as job_mod
from kaft.cache import Cache
from kaft.detection import DETECTORS, Detector, Layout, Need
from kaft.losses import LOSSES, Loss

CONF = Path(__file__).resolve().parents[2] / "conf"


class GoldProbability(Detector):
    """Score = p(gold letter as the first answer token) at T = 1, averaged over the cyclic shifts of the options."""

    def layout(self) -> Layout:
        return Layout(self.settings.num_orders, self.settings.shots, self.settings.prompt, "cyclic")

    def need(self) -> Need:
        return Need(letter_probs=True, temperature=1.0)

    def record(self, item, per_query):
        return {"score": sum(q["probs"][item.answer] for q in per_query) / len(per_query)}

    def saves_samples(self) -> bool:
        return False


class ScoreSquared(Loss):
    """Per-sample reward R_i = Score_i²: a sharper auto-adapt."""

    label = "Score²"

    def weights(self, subsets, scores, k):
        return [s * s for s in scores]


@pytest.fixture()
def toys():
    DETECTORS.register("toy_gold_probability", GoldProbability)
    LOSSES.register("toy_score_squared", ScoreSquared)
    yield
    DETECTORS.unregister("toy_gold_probability")
    LOSSES.unregister("toy_score_squared")


def _job(root: Path, *overrides: str) -> dict:
    base = [*tiny_job_args(root), "detection.num_orders=4", "detection.batch_size=8", f"cache_dir={root / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base, *overrides])
    return job_mod.run(cfg)


def _records(root: Path, key: str) -> list[dict]:
    path = Cache(root / "cache").path("detect", key) / "scores.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_toy_loss_and_a_toy_detector_run_a_whole_job(toys, tmp_path, monkeypatch):
    root = write_tiny_job(tmp_path, n_train=16)
    monkeypatch.chdir(tmp_path)  # outside Hydra a job's run dir is the cwd
    res = _job(root, "loss=constant", "loss.name=toy_score_squared", "detection.name=toy_gold_probability")
    assert res["status"] == "done" and res["cache"]["train"] == "miss"
    assert res["config"]["loss"]["name"] == "toy_score_squared"
    assert res["metrics"]["benchmarks"]["test"]["acc"] >= 0.0

    # the toy detector's Score is what diversified's exact estimator computes with the same orders at T = 1
    toy = _records(root, res["cache_keys"]["detect"])
    ref = _job(
        root, "detection.estimator=exact", "detection.temperature=1.0", "detection.order_scheme=cyclic", "force=true"
    )
    exact = _records(root, ref["cache_keys"]["detect"])
    assert [r["id"] for r in toy] == [r["id"] for r in exact]
    assert all(math.isclose(a["score"], b["score"], rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(toy, exact))

    # the toy loss's weights reached training: R_i = Score_i², averaged per subset in results.json
    sizes = res["subsets"]
    mean_sq = sum(r["score"] ** 2 for r in toy) / len(toy)
    weighted = sum(res["weights_by_subset"][n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert math.isclose(weighted, mean_sq, rel_tol=1e-6)
    assert all(0.0 <= w <= 1.0 for w in res["weights_by_subset"].values())
