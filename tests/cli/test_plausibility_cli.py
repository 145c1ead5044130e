"""Implausible but legal data through the real CLI (``python -m kaft.run``): a question longer than the model's
context, and a test file that is the training file. Each gives exactly ONE ``kaft: warning: ...`` line on stderr,
before the model loads, and the job still runs to its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import make_model, make_tokenizer, tiny_train_rows, write_tiny_job

CONTEXT = 64  # the tiny model's max_position_embeddings: below one long question's prompt


def _kaft(root, model, train, test, *args):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    base = [
        "model=local",
        f"model.path={model}",
        "dataset=local",
        f"dataset.train.path={train}",
        f"dataset.eval.test.path={test}",
        "logger=none",
        "detection.num_orders=2",
        "detection.num_samples=2",
        "detection.shots=2",
        "detection.max_new_tokens=2",
        "train.batch_size=4",
        "train.max_length=256",
        "evaluation.batch_size=4",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *base, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _warnings(out) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("kaft: warning:")]


def _before_model_load(run_dir, line: str) -> bool:
    """The warning is in the job's log, ahead of the model load."""
    log = (run_dir / "run.log").read_text()
    return log.index(line.removeprefix("kaft: warning: ")) < log.index("loaded model")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_job(tmp_path_factory.mktemp("plausible"))


@pytest.mark.slow
def test_question_longer_than_the_context_warns_once_and_runs(root):
    tok = make_tokenizer()
    make_model(len(tok), max_position_embeddings=CONTEXT).save_pretrained(root / "short")
    tok.save_pretrained(root / "short")
    rows = tiny_train_rows()
    rows[5]["question"] = "What is the capital of " + " ".join(["Zorvia"] * CONTEXT) + " ?"
    (root / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _kaft(root, root / "short", root / "long.jsonl", root / "test.jsonl", "hydra.run.dir=long")
    lines = _warnings(out)
    assert len(lines) == 1, out.stderr[-3000:]
    assert f"prompts longer than the model's context of {CONTEXT} tokens (max_position_embeddings" in lines[0]
    assert "detection's 2-shot prompt" in lines[0] and "item 'q5'" in lines[0] and "training prompt" in lines[0]
    assert _before_model_load(root / "long", lines[0])
    assert json.loads((root / "long" / "results.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_test_file_equal_to_training_file_warns_once_and_runs(root):
    out = _kaft(root, root / "model", root / "train.jsonl", root / "train.jsonl", "hydra.run.dir=same")
    lines = _warnings(out)
    assert len(lines) == 1, out.stderr[-3000:]
    assert (
        f"benchmark 'test' (dataset.eval.test) is identical to the training set "
        f"({len(tiny_train_rows())} items)" in lines[0]
    )
    assert _before_model_load(root / "same", lines[0])
    assert json.loads((root / "same" / "results.json").read_text())["status"] == "done"
