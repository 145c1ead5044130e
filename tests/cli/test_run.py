"""The CLI's bad-input path: one actionable line, exit code 2, before any model is loaded, nothing written."""

import os
import subprocess
import sys

import pytest
from helpers.marks import slow_after_first

from kaft.results import auroc


def _kaft(args, tmp_path):
    env = {**os.environ, "KAFT_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "kaft.run", "hydra.run.dir=run", "logger=none", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    slow_after_first(
        [
            (["partition.k=1"], "partition.k must be at least 2"),
            (["partition.k=100000", "loss=constant"], "is larger than the training set"),  # kaft's rewards need K=4
            (["detection.num_orders=0"], "detection.num_orders must be an integer >= 1"),
            (["alpha=1.5"], "alpha"),
            (["partition.k=8"], "rewards"),
            (
                [
                    "dataset=local",
                    "dataset.train.path=/nonexistent/train.jsonl",
                    "dataset.eval.test.path=/nonexistent/t.jsonl",
                ],
                "no such file",
            ),
            (["train.lr=0"], "train.lr must be > 0"),
        ]
    ),
)
def test_bad_config_fails_fast_with_one_line(tmp_path, args, message):
    out = _kaft(args, tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    err = [line for line in out.stderr.splitlines() if line.startswith("kaft: error:")]
    assert len(err) == 1 and message in err[0], out.stderr[-2000:]
    assert "loaded model" not in out.stderr + out.stdout
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "cache" / "testbed_model").exists()  # failed before building or loading a model


@pytest.mark.slow
def test_malformed_row_names_file_row_field(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(
        '{"question": "Q", "options": ["a", "b"], "answer": 0}\n'
        '{"question": "Q2", "options": ["a", "b"], "answer": 7}\n'
    )
    out = _kaft(["dataset=local", f"dataset.train.path={train}", f"dataset.eval.test.path={train}"], tmp_path)
    assert out.returncode == 2
    assert f"kaft: error: {train}: row 2: field 'answer': index 7 out of range for 2 options" in out.stderr


def test_auroc():
    assert auroc([0.0, 0.1], [0.5, 0.9]) == 1.0
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([0.9], [0.1, 0.2]) == 0.0
