"""A training job requeued on a real SLURM cluster (``pytest -m slurm``; the cluster comes from
tests/cluster/slurm_cluster.py via test_slurm's ``slurm_cluster`` fixture).

The job (``hydra/launcher=slurm``, tiny model=local) is submitted, and once its first training checkpoint is in the
cache, ``scontrol requeue <jobid>`` kills it and puts it back in the queue (SLURM holds a requeued job until its
BeginTime, ~2 min later; the test moves that to now). The same command then runs again in the same run dir, finds
detection and base evaluation in the cache, resumes training from the checkpoint and ends with the metrics and
(allclose) adapter of an uninterrupted run. ``scontrol requeue`` needs no slurmdbd (JobRequeue=1 is SLURM's
default); submitit's own timeout path (max_num_timeout, SIGUSR2 -> checkpoint() -> ``scontrol requeue``) lands
in the same restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_job_args
from test_slurm import setup, slurm_cluster  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slurm

# 12 items, batch 4: 3 steps per epoch, 900 steps, a checkpoint every 60
ARGS = ["train.epochs=300", "train.save_steps=60", "train.logging_steps=60"]


def _base(root: Path) -> list[str]:
    return [*tiny_job_args(root), *ARGS]


def _env(root: Path, cache: str) -> dict:
    return {
        **os.environ,
        "KAFT_CACHE_DIR": str(root / cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }


def _slurm(*args, check=True) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    return out.stdout


def _checkpoints(cache: Path) -> list[Path]:
    return [p for p in (cache / "train").glob(".partial-*/checkpoint-*") if (p / "trainer_state.json").exists()]


def _adapter(cache: Path, key: str) -> dict:
    from safetensors.torch import load_file

    return load_file(cache / "train" / key / "adapter_model.safetensors")


def test_requeued_training_job_resumes_from_its_checkpoint(slurm_cluster, setup):  # noqa: F811
    import torch

    # the uninterrupted reference, on the basic launcher, in its own cache
    ref_out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *_base(setup), "hydra.run.dir=ref_requeue"],
        cwd=setup,
        env=_env(setup, "cache_rq_ref"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ref_out.returncode == 0, ref_out.stderr[-3000:]
    ref = json.loads((setup / "ref_requeue" / "results.json").read_text())

    cache = setup / "cache_rq"
    t_submit = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaft.run",
            "-m",
            *_base(setup),
            "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=20",
        ],  # the default sweep dir: multirun/<date>/<time>
        cwd=setup,
        env=_env(setup, "cache_rq"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not _checkpoints(cache):  # mid-training: the first checkpoint is complete
            assert proc.poll() is None, "the sweep ended before a checkpoint: " + proc.stderr.read()[-3000:]
            assert time.time() - t_submit < 600, "no checkpoint within 10 min"
            time.sleep(0.1)
        first = _checkpoints(cache)[0].name
        jobs = [d.name for d in setup.glob("multirun/*/*/.submitit/*") if d.is_dir() and d.name[0].isdigit()]
        assert len(jobs) == 1, jobs
        job = jobs[0]
        _slurm("scontrol", "requeue", job)
        t_requeue = time.time()
        while "PENDING" not in _slurm("squeue", "-h", "-j", job, "-o", "%T", check=False):
            assert time.time() - t_requeue < 60, "the requeued job did not go back to the queue"
            time.sleep(0.2)
        # SLURM makes a requeued job wait (BeginTime = now + ~2 min); start it at once
        _slurm("scontrol", "update", f"JobId={job}", "StartTime=now")
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            _slurm("scancel", *[d.name for d in setup.glob("multirun/*/*/.submitit/*")], check=False)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]

    info = _slurm("scontrol", "show", "job", job)
    assert "Restarts=1" in info, info  # it really ran twice

    runs = list(setup.glob("multirun/*/*/0_*"))
    assert len(runs) == 1, runs  # the restart used the same run dir (same sweep dir, same job dir)
    run = runs[0]
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "done"
    assert res["metrics"] == ref["metrics"] and res["base_metrics"] == ref["base_metrics"]
    assert res["cache_keys"] == ref["cache_keys"]
    key = res["cache_keys"]["train"]
    log = json.loads((cache / "train" / key / "train_log.json").read_text())
    ref_log = json.loads((setup / "cache_rq_ref" / "train" / key / "train_log.json").read_text())
    assert ref_log["resumed_from_step"] is None and log["global_step"] == ref_log["global_step"] == 900
    # SLURM sends SIGTERM (submitit logs and ignores it), then SIGKILL KillWait s later: training goes on meanwhile
    assert int(first.split("-")[1]) <= log["resumed_from_step"] < 900
    got, want = _adapter(cache, key), _adapter(setup / "cache_rq_ref", key)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5, rtol=1e-4), (k, (got[k] - want[k]).abs().max())
    job_log = (run / "run.log").read_text()  # Hydra's job log, appended to by both runs
    assert "resuming training from checkpoint" in job_log
    assert job_log.count("── data") == 2
    assert not list((cache / "train").glob(".partial-*")), "the finished adapter left its checkpoints behind"
    print(
        f"requeued at {first}, resumed from step {log['resumed_from_step']}; "
        f"{time.time() - t_submit:.0f}s from submit to results"
    )
