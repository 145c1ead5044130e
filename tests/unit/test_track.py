"""kaft.track: results.json, package versions, and the logger registry (W&B offline only)."""

from __future__ import annotations

import json
import os

import pytest

from kaft import track

RESULTS = {
    "status": "done",
    "job": {"name": "alpha=0.1", "override_dirname": "alpha=0.1", "num": 0},
    "overrides": ["alpha=0.1"],
    "metrics": {
        "benchmarks": {
            "medqa": {"acc": 0.5, "acc_stderr": 0.1, "n": 8},
            "mmlu": {"acc": 0.25, "acc_stderr": None, "n": 4},
        },
        "average": 0.375,
    },
    "base_metrics": {"benchmarks": {"medqa": {"acc": 0.25, "n": 8}}, "average": 0.25},
    "delta_vs_base": 0.125,
    "timings": {"data": 0.5, "train": 3.25},
    "cache": {"detect": "hit", "train": "miss"},
}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("WANDB_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    yield


def test_write_results_atomic(tmp_path):
    run_dir = tmp_path / "run"
    path = track.write_results(run_dir, RESULTS)
    assert path == run_dir / "results.json"
    assert json.loads(path.read_text()) == RESULTS
    track.write_results(run_dir, {**RESULTS, "status": "failed"})  # overwrite in place
    assert json.loads(path.read_text())["status"] == "failed"
    assert [p.name for p in run_dir.iterdir()] == ["results.json"], "no temporary files left behind"


def test_package_versions():
    v = track.package_versions()
    assert set(v) >= {"torch", "transformers", "peft", "lm_eval", "hydra", "wandb", "datasets", "kaft", "python"}
    assert v["kaft"] and v["python"] and v["torch"]


def test_summary_metrics_flat():
    m = track.summary_metrics(RESULTS)
    assert m["acc/medqa"] == 0.5 and m["acc/mmlu"] == 0.25 and m["average"] == 0.375
    assert m["acc_stderr/medqa"] == 0.1 and "acc_stderr/mmlu" not in m
    assert m["base/acc/medqa"] == 0.25 and m["base/average"] == 0.25 and m["delta_vs_base"] == 0.125
    assert m["time/train"] == 3.25 and m["cache/detect"] == 1 and m["cache/train"] == 0
    assert m["failed"] == 0


def test_none_logger_noops(tmp_path):
    for cfg in ({"name": "none"}, {}, None):
        lg = track.make_logger(cfg, tmp_path, "job", None, {"a": 1})
        lg.log_results(RESULTS)
        lg.finish()
        lg.finish()
    assert list(tmp_path.iterdir()) == []


def test_unknown_logger(tmp_path):
    from kaft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown logger 'tensorboard'; choose one of \['none', 'wandb'\]"):
        track.make_logger({"name": "tensorboard"}, tmp_path, "job", None, {})


def test_a_registered_logger_is_made_by_name(tmp_path):
    class ListLogger(track.NoneLogger):
        seen: list = []

        def log_results(self, results):
            self.seen.append(results["status"])

    track.LOGGERS.register("list", ListLogger)
    try:
        track.make_logger({"name": "list"}, tmp_path, "job", None, {}).log_results({"status": "done"})
    finally:
        track.LOGGERS.unregister("list")
    assert ListLogger.seen == ["done"] and "list" not in track.LOGGERS


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert track.resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert track.resolve_mode(None) == "online"
    assert track.resolve_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert track.resolve_mode(None) == "disabled"
    with pytest.raises(ValueError):
        track.resolve_mode("sometimes")


@pytest.mark.slow
def test_wandb_offline_two_jobs_in_one_process(tmp_path, offline_wandb):
    pytest.importorskip("wandb")
    run_names = []
    for j, alpha in enumerate((0.1, 0.5)):
        run_dir = tmp_path / f"{j}_alpha={alpha}"
        lg = track.make_logger(
            {"name": "wandb", "project": "kaft-test", "mode": "offline", "tags": ["t"]},
            run_dir,
            f"alpha={alpha}",
            "sweep-1",
            {"alpha": alpha, "loss": {"name": "kaft"}},
        )
        assert lg.mode == "offline"
        lg.log_results({**RESULTS, "metrics": {**RESULTS["metrics"], "average": alpha}})
        assert lg.run.summary["average"] == alpha and lg.run.summary["acc/medqa"] == 0.5
        assert lg.run.config["alpha"] == alpha and lg.run.config["loss"]["name"] == "kaft"
        assert lg.run.group == "sweep-1"
        run_names.append(lg.run.id)
        lg.finish()
        lg.finish()  # idempotent
        offline = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, "one offline run dir under the job's run_dir"
        assert list(offline[0].glob("*.wandb")), "the run's data file exists"
    assert len(set(run_names)) == 2, "each job gets its own run"


def test_wandb_job_that_did_not_finish_is_closed_by_the_next(tmp_path, offline_wandb):
    pytest.importorskip("wandb")
    cfg = {"name": "wandb", "mode": "offline"}
    first = track.make_logger(cfg, tmp_path / "0", "crashed", "g", {})  # never finished (the job crashed)
    second = track.make_logger(cfg, tmp_path / "1", "next", "g", {})
    assert second.run.id != first.run.id
    second.log_results({"status": "failed"})
    assert second.run.summary["failed"] == 1
    second.finish(exit_code=1)
    first.finish()  # harmless on a run wandb already closed


def test_wandb_run_id_is_reused_by_a_rerun_of_the_same_job(tmp_path, offline_wandb):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "job"
    ids = []
    for _ in range(2):  # a requeued job: same run directory, same W&B run
        lg = track.make_logger({"name": "wandb", "project": "kaft-test", "mode": "offline"}, run_dir, "j", None, {})
        ids.append(lg.run.id)
        lg.finish()
    assert ids[0] == ids[1] == (run_dir / "wandb_id.txt").read_text().strip()
