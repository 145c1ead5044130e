"""A testbed job whose evaluation has a free-form benchmark (the in-domain test split as question + reference
answer) through the real CLI: the multiple-choice benchmarks keep log-likelihood accuracy, the free-form one is scored
by generation and the exact verifier, printed with its metric kind; generation settings change only the evaluation's
key; bad settings stop the job in one line before a model loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.testbed]

FREE = "+dataset.eval.testbed_ff={source: testbed, split: test_id, format: freeform}"


def _kaft(args, cwd: Path, ok: bool = True):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": str(cwd / "cache"),  # the test's own (fixture below): it asserts misses
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    base = ["experiment=smoke", "logger=none", "progress=false", FREE]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *base, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture()
def own_cache(tmp_path):
    """The testbed model, in a cache of this test's own."""
    from helpers.testbed_cache import private_testbed_cache

    return private_testbed_cache(tmp_path / "cache")


def test_freeform_benchmark_is_scored_generatively(tmp_path, own_cache):
    out = _kaft(["hydra.run.dir=run", "evaluation.generation.max_new_tokens=6"], tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    for m in (res["metrics"], res["base_metrics"]):
        ff = m["benchmarks"]["testbed_ff"]
        assert (ff["metric"], ff["verifier"], ff["n"], ff["n_judged"], ff["no_verdict"]) == (
            "generative",
            "exact",
            32,
            32,
            0,
        )
        assert 0 <= ff["acc"] <= 1 and 0 <= ff["exact_match"] <= 1
        assert all("metric" not in m["benchmarks"][b] for b in ("testbed_id", "testbed_ood"))
        accs = [b["acc"] for b in m["benchmarks"].values()]
        assert m["average"] == pytest.approx(sum(accs) / 3)
    assert res["config"]["evaluation"]["generation"] == {"max_new_tokens": 6, "stop": ["\n"]}
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("testbed_ff"))
    assert "generative, verifier exact (exact_match" in row
    assert next(ln for ln in out.stdout.splitlines() if ln.startswith("testbed_id")).endswith("loglik acc")

    again = _kaft(["hydra.run.dir=run2", "evaluation.generation.max_new_tokens=6"], tmp_path)
    res2 = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert res2["cache"]["evaluate"] == "hit" and res2["metrics"] == res["metrics"]
    assert "loaded model" not in again.stdout + again.stderr

    _kaft(["hydra.run.dir=run3", "evaluation.generation.max_new_tokens=3"], tmp_path)
    res3 = json.loads((tmp_path / "run3" / "results.json").read_text())
    assert res3["cache"]["evaluate"] == "miss" and res3["cache"]["train"] == "hit" and res3["cache"]["detect"] == "hit"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.eval.testbed_ff.format=essay", "format must be one of ['mc', 'freeform'], got 'essay'"),
        ("evaluation.generation.max_new_tokens=0", "evaluation.generation.max_new_tokens must be an integer >= 1"),
    ],
)
def test_bad_generative_settings_stop_in_one_line(tmp_path, override, message):  # fails before any cache use
    out = _kaft(["hydra.run.dir=bad", override], tmp_path, ok=False)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("kaft: error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "loaded model" not in out.stdout + out.stderr
    assert not (tmp_path / "bad" / "results.json").exists()
