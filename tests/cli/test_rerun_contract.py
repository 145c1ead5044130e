"""The re-run contract through the real CLI (issue 19's reproductions, a tiny saved model, local data,
experiment=smoke): an unchanged re-run skips; another config, seed or data in a finished run dir is refused with one
line and leaves that dir's files as they were; force=true re-runs; a truncated results.json re-runs and says why; a
sweep reports every invalid job before its first job runs; Ctrl-C leaves the job interrupted and a re-run resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_tiny_job

ARGS = [
    "experiment=smoke",
    "detection.shots=2",
    "detection.max_new_tokens=2",
    "train.batch_size=4",
    "train.max_length=256",
    "evaluation.batch_size=4",
    "logger=none",
    "progress=false",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_job(tmp_path_factory.mktemp("rerun"))


def _cmd(root: Path, *args: str, train: str = "train.jsonl") -> list[str]:
    flags = [a for a in args if a == "-m"]  # Hydra flags go before the overrides
    return [
        sys.executable,
        "-m",
        "kaft.run",
        *flags,
        "model=local",
        f"model.path={root / 'model'}",
        "dataset=local",
        f"dataset.train.path={root / train}",
        f"dataset.eval.test.path={root / 'test.jsonl'}",
        *ARGS,
        *(a for a in args if a != "-m"),
    ]


def _env(cache: Path) -> dict:
    return {**os.environ, "KAFT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def _kaft(root: Path, *args: str, rc: int = 0, cache: str = "cache", train: str = "train.jsonl"):
    out = subprocess.run(
        _cmd(root, *args, train=train), cwd=root, env=_env(root / cache), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == rc, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _error(out) -> str:
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("kaft: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return errors[0]


def _files(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(root):
    """A finished kaft run: ``root/run``."""
    _kaft(root, "hydra.run.dir=run")
    return root / "run"


@pytest.mark.slow
def test_unchanged_rerun_skips_and_another_config_is_refused(root, finished):
    res = json.loads((finished / "results.json").read_text())
    assert res["status"] == "done" and len(res["identity"]["sha256"]) == 64
    assert set(res["identity"]["parts"]) == {"config", "data", "model", "code"}
    before = _files(finished)
    t0 = time.time()
    out = _kaft(root, "hydra.run.dir=run")
    assert "already complete" in out.stderr + out.stdout and "── detect" not in out.stderr + out.stdout
    assert time.time() - t0 < 60
    kept = ("results.json", ".hydra/config.yaml", ".hydra/overrides.yaml")  # the log has grown by the skip
    assert {k: v for k, v in _files(finished).items() if k in kept} == {k: before[k] for k in kept}
    before = _files(finished)
    out = _kaft(root, "loss=constant", "train.lr=0.01", "hydra.run.dir=run", rc=2)
    line = _error(out)
    assert "holds the results of another run: loss kaft -> constant" in line and "train.lr" in line, line
    assert "force=true" in line and "hydra.run.dir" in line
    assert _files(finished) == before  # .hydra/config.yaml, results.json and the log byte for byte
    line = _error(_kaft(root, "seed=1", "hydra.run.dir=run", rc=2))
    assert "seed 0 -> 1" in line and _files(finished) == before


@pytest.mark.slow
def test_edited_training_answer_is_refused_then_force_reruns(root, finished):
    (root / "edit.jsonl").write_bytes((root / "train.jsonl").read_bytes())
    _kaft(root, "hydra.run.dir=edit_run", train="edit.jsonl")
    rows = [json.loads(ln) for ln in (root / "edit.jsonl").read_text().splitlines()]
    rows[0]["answer"] = (rows[0]["answer"] + 1) % 4
    (root / "edit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = json.loads((root / "edit_run" / "results.json").read_text())
    line = _error(_kaft(root, "hydra.run.dir=edit_run", train="edit.jsonl", rc=2))
    assert "data fingerprint of train changed" in line and "force=true" in line, line
    assert json.loads((root / "edit_run" / "results.json").read_text()) == before
    _kaft(root, "hydra.run.dir=edit_run", "force=true", train="edit.jsonl")
    after = json.loads((root / "edit_run" / "results.json").read_text())
    assert after["data"]["fingerprints"]["train"] != before["data"]["fingerprints"]["train"]
    assert after["identity"]["parts"]["data"] == after["data"]["fingerprints"]
    assert after["cache_keys"]["detect"] != before["cache_keys"]["detect"]  # recomputed on the edited data


@pytest.mark.slow
def test_truncated_results_rerun_and_say_why(root, finished):
    run = root / "trunc_run"
    _kaft(root, "hydra.run.dir=trunc_run")
    text = (run / "results.json").read_text()
    (run / "results.json").write_text(text[: len(text) // 2])
    out = _kaft(root, "hydra.run.dir=trunc_run")
    assert "re-running: the previous results.json:" in out.stderr + out.stdout
    assert json.loads((run / "results.json").read_text())["status"] == "done"


def test_sweep_with_an_invalid_job_fails_before_its_first_job(root):
    out = _kaft(root, "-m", "loss=kaft,eaft", "alpha=0.1,2", "hydra.sweep.dir=bad_sweep", cache="cache_bad", rc=2)
    line = _error(out)
    assert line.startswith(
        "kaft: error: 1 of 4 jobs is invalid: job 1 (loss=kaft alpha=2): loss kaft: 'alpha' must be in [0, 1], got 2"
    ), line
    assert not (root / "bad_sweep").exists() and not (root / "cache_bad").exists()  # nothing ran, nothing written


def test_single_run_config_is_checked_before_its_run_dir_is_written(root):
    line = _error(_kaft(root, "train.lr_scheduler=cosine_typo", "hydra.run.dir=typo_run", cache="cache_typo", rc=2))
    assert "train.lr_scheduler must be one of" in line, line
    assert not (root / "typo_run").exists() and not (root / "cache_typo").exists()


@pytest.mark.slow
def test_seed_rerun_into_the_same_sweep_dir_is_refused(root):
    _kaft(root, "-m", "loss=kaft,constant", "hydra.sweep.dir=sweep")
    before = _files(root / "sweep")
    out = _kaft(root, "-m", "loss=kaft,constant", "seed=1", "hydra.sweep.dir=sweep", rc=2)
    line = _error(out)
    assert "2 of 2 jobs' run dirs under sweep hold the results of another run: job 0 (loss=kaft): seed 0 -> 1" in line
    assert "hydra.sweep.dir" in line and "average" not in out.stdout  # the seed-0 numbers are not printed as done
    assert _files(root / "sweep") == before  # multirun.yaml and every job's .hydra/ untouched


def _checkpointed(cache: Path) -> bool:
    return bool(list((cache / "train").glob(".partial-*/checkpoint-*/trainer_state.json")))


@pytest.mark.slow
def test_ctrl_c_marks_the_job_interrupted_and_a_rerun_resumes(root):
    """A real SIGINT to a real job (a one-job sweep, so kaft.sweep.status reads it) once training has saved a
    checkpoint: one line, exit 130, results.json interrupted, shown so; the same command resumes the training."""
    cache, sweep = root / "cache_int", root / "int_sweep"
    cmd = _cmd(root, "-m", "hydra.sweep.dir=int_sweep", "train.epochs=20", "train.save_steps=5")
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job (``pytest ... &``) starts with SIGINT ignored, and Python keeps an ignored
        # SIGINT: the job would never see the Ctrl-C. The default disposition lets Python install its handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    t0 = time.time()
    try:
        while not _checkpointed(cache):
            assert proc.poll() is None, "the job ended before a training checkpoint; slow it down"
            assert time.time() - t0 < 300
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert re.findall(r"kaft: [^\r\n]*", err) == [  # (it may follow a progress bar's carriage return)
        "kaft: interrupted: train; re-run the same command to resume"
    ], err[-3000:]
    assert "Traceback" not in err
    (job,) = [p.parent for p in sweep.rglob("results.json")]
    res = json.loads((job / "results.json").read_text())
    assert res["status"] == "interrupted" and res["stage"] == "train" and res["metrics"] is None
    assert res["identity"]["parts"]["config"]["train"]["epochs"] == 20
    shown = subprocess.run(
        [sys.executable, "-m", "kaft.sweep.status", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert "interrupted" in shown.stdout and "1 interrupted of 1 jobs" in shown.stdout, shown.stdout + shown.stderr
    rerun = subprocess.run(cmd, cwd=root, env=_env(cache), capture_output=True, text=True, timeout=600)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "re-running: the previous run interrupted" in log and "resuming training from checkpoint" in log
    assert json.loads((job / "results.json").read_text())["status"] == "done"
