"""Runs survive `kill -9`: killed during probing, training or evaluation, the same command finishes with the same
metrics as an uninterrupted run (CPU, same seed), probing resumes from its saved chunks, and no temp debris stays."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import tiny_job_args
from test_pipeline import setup  # noqa: F401  (module fixture: tiny saved model + local data)

pytestmark = pytest.mark.slow

# the tiny run, slowed down enough to be killed at each stage
ARGS = ["detection.num_samples=150", "detection.chunk_size=2", "train.epochs=15", "evaluation.batch_size=1"]


def _cmd(root, run_dir):
    return [sys.executable, "-m", "kaft.run", *tiny_job_args(root, "test.csv"), *ARGS, f"hydra.run.dir={run_dir}"]


def _env(cache):
    return {**os.environ, "KAFT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def _run(root, run_dir, cache):
    out = subprocess.run(_cmd(root, run_dir), cwd=root, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out, json.loads((root / run_dir / "results.json").read_text())


def _kill_when(root, run_dir, cache, ready, timeout=300):
    proc = subprocess.Popen(
        _cmd(root, run_dir), cwd=root, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    t0 = time.time()
    try:
        while not ready(cache):
            assert proc.poll() is None, "the job finished before the kill point; slow it down"
            assert time.time() - t0 < timeout
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _tmp_dirs(cache, stage):
    d = cache / stage
    return [p for p in d.glob(".*") if p.is_dir() and not p.name.startswith(".partial-")] if d.exists() else []


KILL_POINTS = {
    "probing": lambda c: any((c / "detect").glob(".partial-*/chunk_00001.jsonl")),
    "training": lambda c: bool(_tmp_dirs(c, "train")),
    "evaluation": lambda c: bool(_tmp_dirs(c, "evaluate")),
}


@pytest.fixture(scope="module")
def reference(setup):  # noqa: F811
    return _run(setup, "ref", setup / "cache_ref")[1]


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_kill_minus_nine_then_rerun_gives_identical_metrics(setup, reference, stage):  # noqa: F811
    cache = setup / f"cache_kill_{stage}"
    _kill_when(setup, f"killed_{stage}", cache, KILL_POINTS[stage])
    assert not (setup / f"killed_{stage}" / "results.json").exists()
    out, res = _run(setup, f"killed_{stage}", cache)
    assert res["metrics"] == reference["metrics"] and res["base_metrics"] == reference["base_metrics"]
    assert res["cache_keys"] == reference["cache_keys"]
    if stage == "probing":
        assert "resumed" in out.stdout + out.stderr
    for st in ("detect", "train", "evaluate"):
        assert not _tmp_dirs(cache, st), f"temp debris left in {st}"
        assert not list((cache / st).glob(".partial-*")), "finished stage left its scratch dir"
