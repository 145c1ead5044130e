"""``hydra/launcher=slurm`` on a real single-node SLURM cluster (started by tests/cluster/slurm_cluster.py;
``pytest -m slurm``).

The mission sweep (-m loss=kaft,eaft alpha=0.1,0.5) goes through sbatch as one job array and gives the same
metrics as the same sweep on the basic launcher; the jobs run the venv's Python with the sweep's cache dir; a failing
job is recorded and does not stop the other one; ``python -m kaft.sweep.status`` reads the sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    import slurm_cluster as sc

    if sc.existing_cluster():
        yield {"conf": os.environ.get("SLURM_CONF")}
        return
    try:
        info = sc.start(Path(os.environ.get("KAFT_SLURM_DIR", "/tmp/kaft-slurm")))
    except sc.Unavailable as e:
        pytest.skip(f"no SLURM cluster: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(info["conf"])
    yield info
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if os.environ.get("KAFT_SLURM_KEEP") != "1":
        sc.stop(info)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from helpers import write_tiny_job

    return write_tiny_job(tmp_path_factory.mktemp("slurm"))


def _kaft(root, cache, *args, expect=0):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": str(root / cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    from helpers import tiny_job_args

    base = tiny_job_args(root)
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", "-m", *base, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert out.returncode == expect, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _status(sweep) -> str:
    """What ``python -m kaft.sweep.status SWEEP`` prints (it must exit 0)."""
    st = subprocess.run(
        [sys.executable, "-m", "kaft.sweep.status", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert st.returncode == 0, st.stdout + st.stderr
    return st.stdout


SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
]


def _results(sweep: Path) -> dict:
    out = {}
    for p in sweep.rglob("results.json"):
        r = json.loads(p.read_text())
        out[(r["config"]["loss"]["name"], r["config"]["alpha"])] = r
    return out


def test_mission_sweep_through_sbatch_matches_basic_launcher(slurm_cluster, setup):
    out = _kaft(setup, "cache_slurm", "loss=kaft,eaft", "alpha=0.1,0.5", *SLURM, "hydra.sweep.dir=sweep_slurm")
    _kaft(setup, "cache_basic", "loss=kaft,eaft", "alpha=0.1,0.5", "hydra.sweep.dir=sweep_basic")
    on_slurm, local = _results(setup / "sweep_slurm"), _results(setup / "sweep_basic")
    assert set(on_slurm) == set(local) == {("kaft", 0.1), ("kaft", 0.5), ("eaft", 0.1), ("eaft", 0.5)}
    for key, r in on_slurm.items():
        assert r["status"] == "done"
        for part in ("metrics", "base_metrics", "delta_vs_base", "subsets", "weights_by_subset", "detection"):
            assert r[part] == local[key][part], (key, part)
        assert r["cache_keys"] == local[key]["cache_keys"]  # the same artifacts, computed in another cache
    assert len({r["cache_keys"]["detect"] for r in on_slurm.values()}) == 1  # one detection for the sweep

    # the jobs ran as a SLURM array, with the venv's python and the sweep's cache dir
    sub = setup / "sweep_slurm" / ".submitit"
    assert len(list(sub.glob("*/*_result.pkl"))) == 4
    script = next(sub.glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3" in script and sys.executable in script
    assert f"export KAFT_CACHE_DIR='{setup / 'cache_slurm'}'" in script
    assert (setup / "cache_slurm" / "detect").is_dir() and (setup / "cache_basic" / "detect").is_dir()
    assert "kaft sweep summary" in out.stdout and "(4 done)" in out.stdout

    assert "4 done of 4 jobs" in _status(setup / "sweep_slurm")


def test_failed_job_on_slurm_is_recorded_and_the_other_runs(slurm_cluster, setup):
    """detection.shots=20 is more than the dozen training rows hold, an error only the data shows (a config error
    fails the whole sweep before it is submitted, kaft.sweep.preflight): that job records its error on the cluster,
    shots=2 (the mission sweep's kaft alpha=0.1 job, all cache hits) finishes."""
    out = _kaft(
        setup,
        "cache_slurm",
        "loss=kaft",
        "alpha=0.1",
        "detection.shots=2,20",
        *SLURM,
        "hydra.sweep.dir=sweep_fail",
        expect=1,
    )
    sweep = setup / "sweep_fail"
    res = {
        r["config"]["detection"]["shots"] if r.get("config") else None: r
        for r in (json.loads(p.read_text()) for p in sweep.rglob("results.json"))
    }
    assert res[2]["status"] == "done"
    assert res[20]["status"] == "failed" and "detection.shots=20 needs at least 21 training items" in res[20]["error"]
    assert list(sweep.glob("1_*/error.txt"))
    assert "(1 done, 1 failed)" in out.stdout and "failed: job 1" in out.stdout
    st = _status(sweep)
    assert "1 done, 1 failed of 2 jobs" in st and "needs at least 21 training items" in st, st
