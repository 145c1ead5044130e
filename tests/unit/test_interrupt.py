"""kaft.interrupt: a Ctrl-C records the stage that was running and the job's identity, never over a done
results.json, and the CLI's line names the stage (the real SIGINT: tests/cli/test_rerun_contract.py)."""

from __future__ import annotations

import json

from kaft import interrupt
from kaft import job as job_mod
from kaft.cache import Cache
from kaft.sweep import plan, preflight

INFO = {
    "name": "default",
    "override_dirname": "",
    "num": 0,
    "run_dir": "",
    "overrides": ["seed=3"],
    "choices": {"method": "kaft"},
}


def _job(tmp_path):
    ((_, _, cfg),) = plan.compose_jobs([f"cache_dir={tmp_path / 'cache'}", "seed=3"], False)
    job = job_mod.Job(preflight.task_config(cfg), Cache(str(tmp_path / "cache")))
    job.timer.seconds.update({"data": 0.1, "model": 0.0, "detect": 2.5})  # detection was running
    job.ctx = job_mod.S.StageContext(job.cfg, job.cache, None, None, {"train": "f"})  # set once data and model are
    job.cache_hits = {"detect": False}
    return job


def test_interrupt_is_recorded_with_its_stage(tmp_path):
    exc = interrupt.record(tmp_path, _job(tmp_path), INFO)
    assert isinstance(exc, KeyboardInterrupt) and exc.stage == "detect"
    assert interrupt.line(exc) == "kaft: interrupted: detect; re-run the same command to resume"
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "interrupted" and res["stage"] == "detect" and res["metrics"] is None
    assert res["overrides"] == ["seed=3"] and res["config"]["method"] == "kaft"
    parts = res["identity"]["parts"]
    assert parts["config"]["seed"] == 3 and parts["data"] == {"train": "f"} and parts["model"] is None
    assert interrupt.line(KeyboardInterrupt()) == (
        "kaft: interrupted: before the job started; re-run the same command to resume"
    )


def test_a_done_results_json_is_kept(tmp_path):
    done = {"status": "done", "metrics": {"average": 0.5}}
    (tmp_path / "results.json").write_text(json.dumps(done))
    assert interrupt.record(tmp_path, _job(tmp_path), INFO).stage == "detect"
    assert json.loads((tmp_path / "results.json").read_text()) == done
