"""End to end on the embedded testbed through the real CLI: the default job, including the first-time testbed build.
Marked `testbed` and `slow`: it pretrains the testbed model (about a minute on 2 cores) unless the cache has it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.testbed]


def _cache_dir() -> str:
    # share the testbed build with the rest of the session (CI sets KAFT_CACHE_DIR to a fresh dir)
    return os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft")


def _kaft(args, tmp_path, timeout=900):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": _cache_dir(),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_SILENT": "true",
    }
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _results(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def test_default_job(tmp_path):
    """`python -m kaft.run` with no overrides: every stage, results.json, a W&B offline run."""
    out = _kaft(["hydra.run.dir=run"], tmp_path)
    (res,) = _results(tmp_path / "run")
    assert res["status"] == "done" and set(res["metrics"]["benchmarks"]) == {"testbed_id", "testbed_ood"}
    assert 0 <= res["metrics"]["average"] <= 1 and res["base_metrics"]["average"] > 0.25
    assert sum(res["subsets"].values()) == res["data"]["n_train"] and len(res["subsets"]) == 4
    assert set(res["timings"]) >= {"data", "model", "detect", "partition", "train", "evaluate"}
    assert res["detection"]["auroc_contradict"] >= 0.9 and res["detection"]["contradict_in_lowest_subset"] >= 0.75
    assert list((tmp_path / "run").glob("wandb/offline-run-*")), "no W&B offline run written"
    assert "average" in out.stdout


def test_detection_strategies_and_ablations(tmp_path):
    """Every detection strategy and the paper's ablation switches run end to end on the testbed (smoke sizes)."""
    _kaft(
        [
            "-m",
            "detection=icl,no_diverse_query,no_sampling,no_both",
            "experiment=smoke",
            "logger=none",
            "progress=false",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    res = _results(tmp_path / "sweep")
    assert len(res) == 4 and all(r["status"] == "done" for r in res)
    assert len({r["cache_keys"]["detect"] for r in res}) == 4  # four different detections
    by = {tuple(o for o in r["overrides"] if o.startswith("detection=")): r for r in res}
    assert "confident_rate" in by[("detection=icl",)]["detection"]  # icl's "reflects knowledge" flag, as a rate
    for r in res:
        assert 0.5 <= r["detection"]["auroc_contradict"] <= 1.0 or r["overrides"] == ["detection=icl"]


def test_mc_conversion_exact_on_free_form_testbed(tmp_path):
    _kaft(
        [
            "dataset=testbed_freeform",
            "detection=mc_conversion",
            "detection.estimator=exact",
            "experiment=smoke",
            "logger=none",
            "progress=false",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    (res,) = _results(tmp_path / "run")
    assert res["status"] == "done" and res["data"]["n_train"] == 200
    assert {"any_correct_rate", "high_conf_error_rate", "auroc_contradict"} <= set(res["detection"])
