"""train.target and free-form training through the real CLI (``python -m kaft.run``): an impossible target is one
``kaft: error:`` line before any model loads, and ``dataset=testbed_freeform detection=mc_conversion`` trains on the
free-form responses (MC conversion detects only, ILP §3.1.1), which results.json states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.marks import slow_after_first

FREEFORM = ["dataset=testbed_freeform", "detection=mc_conversion"]


def _kaft(args, cwd: Path, cache: str, timeout: int = 900):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": cache,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "kaft.run", "logger=none", "progress=false", "hydra.run.dir=run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD = {
    "option_on_free_form_data": (
        ["dataset=testbed_freeform", "train.target=option"],
        "train.target=option needs multiple-choice items",
    ),
    "relabel_on_free_form_training": ([*FREEFORM, "strategy=self_align"], "strategy=self_align relabels answers"),
    "detection_pairs_on_free_form_training": (
        [*FREEFORM, "loss=dpo", "loss.pair_source=detection"],
        "loss.pair_source=detection pairs detection's sampled letters",
    ),
}


@pytest.mark.parametrize("case", slow_after_first(BAD))
def test_impossible_target_is_one_line_before_any_model(tmp_path, case):
    args, message = BAD[case]
    out = _kaft(args, tmp_path, str(tmp_path / "cache"), timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("kaft: error:")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-3000:]
    assert message in errors[0] and "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # nothing built or loaded


@pytest.mark.slow
@pytest.mark.testbed
def test_mc_conversion_detects_and_training_keeps_the_free_form_responses(tmp_path):
    """About 40 s on 2 cores once the testbed model is cached (it is shared with the session's other testbed tests)."""
    cache = os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft")
    args = [*FREEFORM, "detection.estimator=exact", "experiment=smoke", "evaluation.limit=16"]
    out = _kaft(args, tmp_path, cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "done" and res["data"]["n_train"] == 200
    assert res["train_target"]["kind"] == "response"
    # testbed_freeform's responses are sentences of the world's templates: 6-8 tokens each (7.1 on average)
    assert 6 <= res["train_target"]["mean_label_tokens"] <= 8
    assert "testbed_ff" in res["metrics"]["benchmarks"]  # the free-form benchmark, scored generatively
    assert res["metrics"]["benchmarks"]["testbed_ff"]["metric"] == "generative"
    assert {"any_correct_rate", "high_conf_error_rate", "auroc_contradict"} <= set(res["detection"])


@pytest.mark.slow
def test_option_target_on_a_tiny_multiple_choice_job(tmp_path):
    """``train.target=option`` trains on " B. <option text>" (several label tokens), and results.json says so."""
    from helpers import tiny_job_args, write_tiny_job

    root = write_tiny_job(tmp_path / "job")
    out = _kaft([*tiny_job_args(root), "train.target=option", "loss=eaft"], tmp_path, str(tmp_path / "cache"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["train_target"]["kind"] == "option" and res["train_target"]["mean_label_tokens"] > 1
