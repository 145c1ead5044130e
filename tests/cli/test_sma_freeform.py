"""SMA's DPO on free-form responses through the real CLI, on the free-form testbed (detection=mc_conversion): the
job samples free-form responses to the training prompts, judges them with the exact verifier, caches them
(dpo_samples) and trains DPO on whole responses; pairs=dataset_dataset needs no sampling; a rerun reuses the
samples and the adapter. (pairs=dataset_self here: today's testbed model answers a free-form prompt with an options
list, so self_self finds no correct sample to pair; the pair construction itself is tested in
tests/unit/losses/test_response_pairs.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.testbed]

BASE = [
    "dataset=testbed_freeform",
    "detection=mc_conversion",
    "detection.estimator=exact",
    "experiment=smoke",
    "logger=none",
    "progress=false",
    "loss=dpo",
    "+dataset.train.limit=40",
    "loss.num_samples=4",
    "loss.response_tokens=6",
    "evaluation.limit=16",
]


def _kaft(args, cwd: Path):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft"),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *BASE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return json.loads((cwd / args[-1].split("=", 1)[1] / "results.json").read_text())


def _pairs(res) -> list[dict]:
    cache = Path(res["config"]["cache_dir"])
    path = cache / "train" / res["cache_keys"]["train"] / "pairs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dpo_on_free_form_responses_end_to_end(tmp_path):
    res = _kaft(["loss.pairs=dataset_self", "hydra.run.dir=run"], tmp_path)
    assert res["status"] == "done" and res["cache"]["dpo_samples"] in ("miss", "hit")
    pairs = _pairs(res)
    assert pairs and all(p["chosen_from"] == "dataset" and p["rejected_from"] == "self" for p in pairs)
    assert all(p["prompt"].endswith("Answer:") and "A. " not in p["prompt"] for p in pairs)  # free-form prompts
    assert sum(len(p["rejected"].split()) > 1 for p in pairs) > len(pairs) / 2  # whole responses, not letters
    assert max(sum(p["id"] == i for p in pairs) for i in {p["id"] for p in pairs}) <= 8  # <= max_pairs per item

    again = _kaft(["loss.pairs=dataset_self", "hydra.run.dir=run2"], tmp_path)
    assert again["cache"]["dpo_samples"] == "hit" and again["cache"]["train"] == "hit"

    dd = _kaft(["loss.pairs=dataset_dataset", "hydra.run.dir=run3"], tmp_path)
    assert "dpo_samples" not in dd["cache"]  # the data set's own wrong answers: nothing sampled
    assert {(p["chosen_from"], p["rejected_from"]) for p in _pairs(dd)} == {("dataset", "dataset")}
