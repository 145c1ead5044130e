"""A clean console: a job whose every stage computes (sampled detection through the KV cache, LoRA training,
evaluation, then evaluation of a cached adapter) prints no DeprecationWarning or FutureWarning — kaft calls the pinned
libraries' current APIs. Deprecation and future warnings attributed to kaft's own modules are made errors, every
other warning is shown every time (Python hides DeprecationWarnings outside ``__main__`` by default, and setup.cfg's
pytest filter would hide them here), and the captured output must name none, nor transformers' logged
deprecations (``... are deprecated``)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import write_tiny_job

pytestmark = pytest.mark.slow

# kaft.run as ``python -m`` runs it, under warning filters set before anything is imported
LAUNCH = (
    "import runpy, sys, warnings\n"
    "warnings.simplefilter('always')\n"
    "for category in (DeprecationWarning, FutureWarning):\n"
    "    warnings.filterwarnings('error', category=category, module=r'kaft(\\.|$)')\n"
    "sys.argv = ['kaft.run', *sys.argv[1:]]\n"
    "runpy.run_module('kaft.run', run_name='__main__', alter_sys=True)\n"
)
WARNING_MARKS = ("DeprecationWarning", "FutureWarning", "is deprecated", "are deprecated")


def _kaft(root, run_dir, *overrides):
    env = {**os.environ, "KAFT_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("PYTHONWARNINGS", None)
    args = [
        "model=local",
        f"model.path={root / 'model'}",
        "dataset=local",
        f"dataset.train.path={root / 'train.jsonl'}",
        f"dataset.eval.test.path={root / 'test.jsonl'}",
        "detection.num_orders=2",
        "detection.num_samples=3",
        "detection.shots=2",
        "detection.max_new_tokens=2",
        "train.batch_size=4",
        "train.max_length=256",
        "evaluation.batch_size=4",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    out = subprocess.run(
        [sys.executable, "-c", LAUNCH, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    noisy = [line for line in (out.stdout + out.stderr).splitlines() if any(m in line for m in WARNING_MARKS)]
    assert not noisy, "\n".join(noisy)
    return json.loads((root / run_dir / "results.json").read_text())


def test_a_job_prints_no_deprecation_or_future_warnings(tmp_path):
    root = write_tiny_job(tmp_path)
    first = _kaft(root, "r1")
    assert set(first["cache"].values()) == {"miss"}  # every stage computed under the filters
    # the same adapter from the cache, evaluated anew: peft loads it onto the base model (PeftModel.from_pretrained)
    second = _kaft(root, "r2", "evaluation.limit=4")
    assert second["cache"]["train"] == "hit" and second["cache"]["evaluate"] == "miss"
