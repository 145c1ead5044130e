"""Bad files and machines, through the real CLI (issue 19, item 6): each ends in ONE actionable ``kaft: error:`` line,
a non-zero exit and no traceback. The job cases (``python -m kaft.run``) reuse tests/cli/test_bad_input.py's
fixture and checks (nothing loaded, nothing in the cache); the full disk fills a real filesystem (a tmpfs mounted
for the test, root only, else skipped: tests/unit/test_diskspace.py covers the raised-error shapes everywhere)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import ROWS, _check, _jsonl, _run, _write, good  # noqa: F401  (good: module fixture)


def _one_line(out, message: str) -> str:
    """Exactly one ``kaft: error:`` line holding ``message``, a non-zero exit, no traceback. The line may follow a
    progress bar that the failure cut off before its newline (tqdm's, during training)."""
    errors = [line[line.index("kaft: error:") :] for line in out.stderr.splitlines() if "kaft: error:" in line]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-3000:]
    assert message in errors[0], errors[0]
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------------------------- data
def test_answer_base_not_a_number(tmp_path, good):  # noqa: F811
    out, cache = _run(tmp_path, good, ["dataset.train.answer_base=abc"])
    _check(out, cache, "answer_base='abc': must be 0 or 1", tmp_path)


def test_data_path_is_a_folder(tmp_path, good):  # noqa: F811
    (tmp_path / "x.jsonl").mkdir()
    out, cache = _run(tmp_path, good, [], train=tmp_path / "x.jsonl")
    _check(out, cache, "x.jsonl is a folder, not a data file", tmp_path)


def test_boolean_answer(tmp_path, good):  # noqa: F811
    train = _write(tmp_path, "train.jsonl", _jsonl([ROWS[0], {**ROWS[1], "answer": True}]))
    out, cache = _run(tmp_path, good, [], train=train)
    _check(out, cache, "row 2: field 'answer': true is not an answer", tmp_path)


def test_answer_given_as_option_text(tmp_path, good):  # noqa: F811
    train = _write(tmp_path, "train.jsonl", _jsonl([{**ROWS[0], "answer": "green"}]))
    out, cache = _run(tmp_path, good, [], train=train)
    _check(out, cache, "'green' is the text of option B; write its letter 'B' or its index 1", tmp_path)


# ----------------------------------------------------------------------------------------------- model and machine
def test_truncated_safetensors(tmp_path, good):  # noqa: F811
    model = tmp_path / "model"
    shutil.copytree(good / "model", model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted copy or download
    out, cache = _run(tmp_path, good, [], model=model)
    _check(
        out,
        cache,
        f"{weights}: {len(data) // 2} bytes where its header says {len(data)} bytes: the file is truncated or damaged",
        tmp_path,
    )


def test_cuda_device_without_a_gpu(tmp_path, good):  # noqa: F811
    """CUDA_VISIBLE_DEVICES="" hides any GPU, so torch here is as a CPU-only install (the check runs on any host)."""
    out, cache = _run(tmp_path, good, ["device=cuda"], env={"CUDA_VISIBLE_DEVICES": ""})
    _check(out, cache, "device=cuda: this torch", tmp_path)
    assert "sees no CUDA GPU; use device=cpu, or device=null" in out.stderr


def test_unknown_device(tmp_path, good):  # noqa: F811
    out, cache = _run(tmp_path, good, ["device=gpu0"])
    _check(
        out, cache, "device must be null (cuda if available, else cpu), cpu, cuda, cuda:N or mps, got 'gpu0'", tmp_path
    )


@pytest.fixture
def small_disk(tmp_path):
    from helpers import small_disk as mount

    with mount(tmp_path / "small_disk", "64k") as mnt:
        yield mnt


@pytest.mark.slow
def test_full_disk_during_a_job(tmp_path, good, small_disk):  # noqa: F811
    """The cache on a 64 KiB disk: the job runs until an artifact no longer fits, then one line names the cache and
    the free space; every artifact left in the cache is complete (has its manifest), no temporary dir remains."""
    out, _ = _run(
        tmp_path,
        good,
        ["experiment=smoke", "progress=false", "train.batch_size=4", "train.max_length=256", "evaluation.batch_size=4"],
        cache=small_disk / "cache",
    )
    line = _one_line(out, f"the disk holding the kaft cache ({small_disk / 'cache'}) is full: writing ")
    assert "MiB are free there now, so it needs more than that" in line and "KAFT_CACHE_DIR" in line
    for stage in (small_disk / "cache").iterdir():
        for entry in stage.iterdir():
            assert (entry / "manifest.json").is_file() or entry.name.startswith(".partial-"), entry


# ----------------------------------------------------------------------------------------------- output paths
def _tool(tmp: Path, module: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )


def test_table_out_below_a_regular_file(tmp_path):
    blocker = _write(tmp_path, "a_file", "mine\n")
    _one_line(_tool(tmp_path, "analysis.table", tmp_path, "--out", blocker / "x.md"), "a_file is a file, not a folder")
    assert blocker.read_text() == "mine\n"


def test_export_force_onto_a_folder_of_runs(tmp_path):
    """``kaft.export --force`` onto the folder that holds the runs: refused, every file still there."""
    run = tmp_path / "runs" / "run_a"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"status": "done", "config": {}}))
    _write(tmp_path / "runs", "notes.txt", "the only copy\n")
    _one_line(
        _tool(tmp_path, "kaft.export", run, "--out", tmp_path / "runs", "--force"),
        "is not an export kaft wrote: it holds no kaft export manifest",
    )
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == ["notes.txt", "results.json", "run_a"]
