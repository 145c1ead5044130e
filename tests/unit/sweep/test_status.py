"""kaft.sweep.status: job states of fabricated sweep dirs; failure recording in a real multirun (basic launcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaft.sweep import status
from kaft.sweep.summary import summarize


def _sweep(tmp_path: Path, task=("loss=kaft,eaft", "alpha=0.1,0.5"), params=None) -> Path:
    sweep = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    sweep.mkdir(parents=True)
    lines = [
        "hydra:",
        "  sweeper:",
        "    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "    max_batch_size: null",
        "    params:" + ("" if params else " null"),
    ]
    lines += [f"      {k}: {v}" for k, v in (params or {}).items()]
    lines += ["  overrides:", "    task:"] + [f"    - {t}" for t in task]
    (sweep / "multirun.yaml").write_text("\n".join(lines) + "\n")
    return sweep


def _job(sweep: Path, num: int, overrides: list[str], results: dict | None = None, error: str | None = None) -> Path:
    d = sweep / f"{num}_{','.join(overrides)}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n"
        + "".join(f"    - {o}\n" for o in overrides)
        + f"  job:\n    num: {num}\n    override_dirname: {','.join(overrides)}\n"
    )
    if results is not None:
        (d / "results.json").write_text(json.dumps({"job": {"num": num}, "overrides": overrides, **results}))
    if error is not None:
        (d / "error.txt").write_text(error)
    return d


def test_expected_jobs_from_multirun_yaml(tmp_path):
    sweep = _sweep(tmp_path, task=("alpha=0.1,0.5", "seed=1"), params={"loss": "kaft,eaft"})
    assert status.expected_jobs(sweep) == [
        ["loss=kaft", "alpha=0.1", "seed=1"],
        ["loss=kaft", "alpha=0.5", "seed=1"],
        ["loss=eaft", "alpha=0.1", "seed=1"],
        ["loss=eaft", "alpha=0.5", "seed=1"],
    ]
    assert status.expected_jobs(tmp_path / "nothing") is None


def test_states_done_failed_running_not_started(tmp_path):
    sweep = _sweep(tmp_path)
    _job(sweep, 0, ["loss=kaft", "alpha=0.1"], {"status": "done", "metrics": {"average": 0.625}})
    _job(
        sweep,
        1,
        ["loss=kaft", "alpha=0.5"],
        {"status": "failed", "error": "ConfigError: alpha must be in [0, 1]"},
        error="Traceback (most recent call last):\n  ...\nConfigError: alpha must be in [0, 1]\n",
    )
    _job(sweep, 2, ["loss=eaft", "alpha=0.1"])  # started, nothing written yet
    rows = status.job_states(sweep)
    assert [(r["num"], r["state"]) for r in rows] == [(0, "done"), (1, "failed"), (2, "running"), (3, "not started")]
    assert rows[0]["detail"] == "average 0.6250"
    assert rows[1]["detail"] == "ConfigError: alpha must be in [0, 1]"
    assert rows[3]["overrides"] == ["loss=eaft", "alpha=0.5"] and rows[3]["path"] is None
    table = status.format_states(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["job", "state", "overrides", "detail"]
    assert lines[2].split()[:3] == ["0", "done", "loss=kaft"] and "not started" in lines[5]
    assert lines[-1] == "1 done, 1 running, 1 failed, 1 not started of 4 jobs"


def test_error_file_without_results_is_failed_with_its_last_line(tmp_path):
    sweep = _sweep(tmp_path, task=("alpha=0.1,0.5",))
    _job(
        sweep,
        0,
        ["alpha=0.1"],
        error="Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n",
    )
    rows = status.job_states(sweep)
    assert rows[0]["state"] == "failed" and rows[0]["detail"] == "RuntimeError: CUDA out of memory"
    assert summarize(sweep)[0]["status"] == "failed"  # the sweep summary agrees
    assert summarize(sweep)[0]["error"] == "RuntimeError: CUDA out of memory"


def test_submitit_queued_killed_and_crashed(tmp_path):
    sweep = _sweep(tmp_path, task=("alpha=0.1,0.5,0.9",))
    sub = sweep / ".submitit"
    for task in range(3):
        (sub / f"41_{task}").mkdir(parents=True)
        (sub / f"41_{task}" / f"41_{task}_submitted.pkl").write_bytes(b"not a pickle")  # falls back to the index
    (sub / "41_0" / "41_0_0_log.out").write_text("")
    (sub / "41_0" / "41_0_0_log.err").write_text(
        "slurmstepd: error: *** JOB 41 ON node1 CANCELLED AT 2026-01-01T00:10:00 DUE TO TIME LIMIT ***\n"
    )
    (sub / "41_1" / "41_1_0_log.out").write_text("starting\n")
    import pickle

    (sub / "41_1" / "41_1_0_result.pkl").write_bytes(pickle.dumps(("error", "Traceback ...\nMemoryError: boom\n")))
    rows = status.job_states(sweep)
    assert [r["state"] for r in rows] == ["failed", "failed", "not started"]
    assert "DUE TO TIME LIMIT" in rows[0]["detail"] and rows[1]["detail"] == "MemoryError: boom"
    assert rows[2]["detail"] == "queued (job 41_2)"


def test_cli(tmp_path):
    sweep = _sweep(tmp_path, task=("alpha=0.1,0.5",))
    _job(sweep, 0, ["alpha=0.1"], {"status": "done", "metrics": {"average": 0.5}})
    out = subprocess.run(
        [sys.executable, "-m", "kaft.sweep.status", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "1 done, 1 not started of 2 jobs" in out.stdout, out.stderr
    assert status.main([str(tmp_path / "nope")]) == 2


def test_record_failure_and_one_line(tmp_path):
    try:
        raise RuntimeError("first\nsecond line")
    except RuntimeError as e:
        line = status.record_failure(tmp_path, e, {"num": 3, "overrides": ["a=1"]})
    assert line == "second line"  # the traceback's last line
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "failed" and res["error"] == line and res["job"]["num"] == 3
    assert "Traceback" in (tmp_path / "error.txt").read_text()
    from hydra.errors import MissingConfigException

    e = MissingConfigException(
        "In 'config': Could not find 'loss/foo'\n\nAvailable options in 'loss':\n\tkaft\n"
        "\teaft\nConfig search path:\n\tprovider=main"
    )
    assert status.one_line(e) == "In 'config': Could not find 'loss/foo'; Available options in 'loss': kaft, eaft"


# ----------------------------------------------------------------------------------------------- a real multirun
@pytest.mark.slow
def test_failing_jobs_are_recorded_and_do_not_stop_the_sweep(tmp_path):
    """Four jobs on the basic launcher: one runs, two ask for more shots than the data has (a user error only the
    data shows: a config error fails the whole sweep up front, kaft.sweep.preflight), one a model whose weights do
    not fit its config (an exception while loading). All four are recorded; the sweep exits 1 after all ran."""
    from helpers import save_tiny_model

    for name in ("good", "corrupt"):
        save_tiny_model(tmp_path / name)
    # weights whose shapes disagree with config.json: whole files (the one-line damaged-file check passes), and a
    # real crash inside transformers' loader
    conf = tmp_path / "corrupt" / "config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "intermediate_size": 96}))
    rows = [
        {
            "question": f"What is the capital of Zorvia {i} ?",
            "options": ["red", "green", "blue", "yellow"],
            "answer": i % 4,
        }
        for i in range(8)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "KAFT_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    args = [
        sys.executable,
        "-m",
        "kaft.run",
        "-m",
        f"model.path={tmp_path}/good,{tmp_path}/corrupt",
        "detection.shots=2,8",
        "model=local",
        "dataset=local",
        f"dataset.train.path={tmp_path / 'd.jsonl'}",
        f"dataset.eval.test.path={tmp_path / 'd.jsonl'}",
        "experiment=tiny",
        "hydra.sweep.dir=sweep",
    ]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    sweep = tmp_path / "sweep"
    res = {r["job"]["num"]: r for r in (json.loads(p.read_text()) for p in sweep.rglob("results.json"))}
    assert [res[n]["status"] for n in range(4)] == ["done", "failed", "failed", "failed"]
    assert "detection.shots=8 needs at least 9 training items" in res[1]["error"] and res[1]["error"] == res[3]["error"]
    assert "corrupt" not in res[1]["error"]
    assert res[2]["error_type"] not in ("ConfigError", "ModelError")  # a real crash, traceback kept
    err2 = next(sweep.glob("2_*/error.txt")).read_text()
    assert err2.startswith("Traceback") and res[2]["error"] == err2.strip().splitlines()[-1].strip()
    assert out.stderr.count("kaft: error: detection.shots=8 needs at least 9 training items") == 2
    assert "(1 done, 3 failed)" in out.stdout and out.stdout.count("failed: job ") == 3
    st = status.job_states(sweep)
    assert [r["state"] for r in st] == ["done", "failed", "failed", "failed"]
