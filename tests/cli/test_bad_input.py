"""Bad input, one test each, through the real CLI (``python -m kaft.run``): malformed data files and rows, impossible
configs, missing or unwritable paths, an incomplete model directory. Each must end in ONE actionable
``kaft: error: ...`` line on stderr, a non-zero exit, no traceback, no model loaded and nothing in the cache dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.marks import slow_after_first

ROWS = [
    {
        "id": f"q{i}",
        "question": f"What is the capital of Zorvia {i} ?",
        "options": ["red", "green", "blue", "yellow"],
        "answer": i % 4,
    }
    for i in range(8)
]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A saved tiny model and a valid data file: every case breaks one thing on top of these."""
    from helpers import save_tiny_model

    root = tmp_path_factory.mktemp("good")
    save_tiny_model(root / "model")
    (root / "train.jsonl").write_text(_jsonl(ROWS))
    return root


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return p


def _run(
    tmp: Path,
    good: Path,
    args: list[str],
    train: Path | None = None,
    model: Path | None = None,
    cache: Path | None = None,
    multirun: bool = False,
    local_data: bool = True,
    local_model: bool = True,
    env: dict | None = None,
):
    train = train or good / "train.jsonl"
    cache = cache or tmp / "cache"
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        **(env or {}),
    }
    data = ["dataset=local", f"dataset.train.path={train}", f"dataset.eval.test.path={good / 'train.jsonl'}"]
    model_args = ["model=local", f"model.path={model or good / 'model'}"] if local_model else []
    base = [*model_args, *(data if local_data else []), "logger=none", "detection.shots=2"]
    mode = ["-m", "hydra.sweep.dir=sweep"] if multirun else ["hydra.run.dir=run"]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *mode, *base, *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, cache


def _check(out, cache: Path, message: str, tmp: Path):
    log = out.stdout + out.stderr
    assert out.returncode != 0, log[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("kaft: error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert message in errors[0], errors[0]
    assert "Traceback" not in log, log[-3000:]
    assert "loaded model" not in log  # failed before any model was loaded
    stages = [p.name for p in cache.iterdir()] if cache.is_dir() else []
    assert stages == [], f"cache dir written: {stages}"
    assert not (tmp / "run" / "results.json").exists()


# ----------------------------------------------------------------------------------------------- data files and rows
DATA_CASES = {
    "empty_file": ("train.jsonl", "", "train.jsonl: no rows"),
    "bad_json_line": ("train.jsonl", _jsonl(ROWS[:2]) + "{'question': oops}\n", "row 3: not valid JSON"),
    "missing_field": (
        "train.jsonl",
        _jsonl([ROWS[0], {k: v for k, v in ROWS[1].items() if k != "question"}]),
        "row 2: field 'question': missing",
    ),
    "answer_out_of_range": (
        "train.jsonl",
        _jsonl([ROWS[0], {**ROWS[1], "answer": 7}]),
        "row 2: field 'answer': index 7 out of range for 4 options",
    ),
    "answer_bad_letter": (
        "train.jsonl",
        _jsonl([{**ROWS[0], "answer": "Z"}]),
        "row 1: field 'answer': 'Z' is neither an index nor a letter A-D",
    ),
    "duplicate_id": (
        "train.jsonl",
        _jsonl([ROWS[0], ROWS[1], {**ROWS[2], "id": "q0"}]),
        "row 3: field 'id': duplicate id 'q0' (first seen in row 1)",
    ),
    "non_utf8": ("train.jsonl", _jsonl(ROWS[:2]).encode() + b'{"question": "caf\xe9"}\n', "not UTF-8 text"),
    "one_option": ("train.jsonl", _jsonl([{**ROWS[0], "options": ["red"]}]), "needs at least 2 options"),
    "options_not_a_list": ("train.jsonl", _jsonl([{**ROWS[0], "options": 5}]), "expected a list of strings"),
    "row_not_an_object": ("train.jsonl", "[1, 2]\n", "row 1: expected an object"),
    "json_not_a_list": ("train.json", json.dumps({"rows": ROWS}), "expected a JSON list of rows"),
    "csv_missing_column": ("train.csv", "question,answer\nWhat ?,A\n", "row 1: field 'options': missing"),
    "unsupported_type": ("train.txt", "question: what?\n", "unsupported file type '.txt'"),
}


@pytest.mark.parametrize("case", slow_after_first(DATA_CASES))
def test_bad_data(tmp_path, good, case):
    name, content, message = DATA_CASES[case]
    out, cache = _run(tmp_path, good, [], train=_write(tmp_path, name, content))
    _check(out, cache, message, tmp_path)


# ----------------------------------------------------------------------------------------------- impossible configs
CONFIG_CASES = {
    "unknown_group_option": (["loss=nope"], "Could not find 'loss/nope'; Available options in 'loss':"),
    "unknown_key": (["trian.lr=0.1"], "Key 'trian' is not in struct"),
    "bad_override_syntax": (["alpha=[0.1"], "bad override 'alpha=[0.1': no viable alternative"),
    "partition_k_below_2": (["partition.k=1"], "partition.k must be at least 2"),
    "partition_k_above_data_size": (["partition.k=9", "loss=constant"], "is larger than the training set"),
    "alpha_above_1_for_kaft": (["loss=kaft", "alpha=1.5"], "'alpha' must be in [0, 1], got 1.5"),
    "alpha_below_0_for_kaft": (["loss=kaft", "alpha=-0.1"], "'alpha' must be in [0, 1], got -0.1"),
    "rewards_length_not_k": (["loss=kaft", "loss.rewards=[0.1,1]"], "rewards"),
    "too_many_shots": (["detection.shots=8"], "detection.shots=8 needs at least 9 training items"),
    "eval_without_data": (["~dataset.eval.test"], "has no eval benchmarks"),
    "eval_data_missing": (["dataset.eval.test.path=/nonexistent/test.jsonl"], "/nonexistent/test.jsonl: no such file"),
    "launcher_field_wrong_type": (
        ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=many"],
        "hydra.launcher.cpus_per_task=many: Value 'many' of type 'str' could not be converted to Integer",
    ),
    "submitit_local_timeout_wrong_type": (
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=soon"],
        "could not be converted to Integer",
    ),
}


@pytest.mark.parametrize("case", slow_after_first(CONFIG_CASES))
def test_impossible_config(tmp_path, good, case):
    args, message = CONFIG_CASES[case]
    out, cache = _run(tmp_path, good, args)
    _check(out, cache, message, tmp_path)


def test_launcher_field_wrong_type_in_a_sweep(tmp_path, good):
    out, cache = _run(
        tmp_path, good, ["alpha=0.1,0.5", "hydra/launcher=slurm", "hydra.launcher.mem_gb=lots"], multirun=True
    )
    _check(out, cache, "hydra.launcher.mem_gb=lots", tmp_path)
    assert out.returncode == 2 and not list((tmp_path / "sweep").rglob("results.json"))


@pytest.mark.slow
def test_impossible_testbed_world(tmp_path, good):
    """The testbed's world is built with the data, before any model: a world too small for its splits says which
    knob to turn."""
    out, cache = _run(tmp_path, good, ["testbed.world.n_test_ood=5000"], local_data=False)
    _check(out, cache, "test_ood need 5000 facts but n_people=64 x 4 relations give 256; raise n_people", tmp_path)
    out, cache = _run(tmp_path, good, ["+testbed.world.train_mix.fake=0.5"], local_data=False)
    _check(out, cache, "testbed world.train_mix: unknown kinds ['fake']", tmp_path)


@pytest.mark.slow
def test_local_dataset_without_paths(tmp_path, good):
    out, cache = _run(tmp_path, good, ["dataset.train.path=???", "dataset.eval.test.path=???"])
    _check(out, cache, "a local data set needs a path: set dataset.train.path=", tmp_path)


@pytest.mark.slow
def test_local_model_without_path(tmp_path, good):
    out, cache = _run(tmp_path, good, ["model.path=???"])
    _check(out, cache, "model.path is required for a local model", tmp_path)


# ----------------------------------------------------------------------------------------------- paths and models
def test_missing_train_file(tmp_path, good):
    out, cache = _run(tmp_path, good, [], train=tmp_path / "nope" / "train.jsonl")
    _check(out, cache, "nope/train.jsonl: no such file", tmp_path)


def test_missing_model_dir(tmp_path, good):
    out, cache = _run(tmp_path, good, [], model=tmp_path / "no_model")
    _check(out, cache, "no_model: no such model directory", tmp_path)


def test_model_dir_without_tokenizer(tmp_path, good):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(good / "model", model)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / f).unlink(missing_ok=True)
    out, cache = _run(tmp_path, good, [], model=model)
    _check(out, cache, f"{model}: no tokenizer in the model directory", tmp_path)


def test_model_dir_without_config(tmp_path, good):
    (tmp_path / "weights_only").mkdir()
    out, cache = _run(tmp_path, good, [], model=tmp_path / "weights_only")
    _check(out, cache, "not a model directory (no config.json)", tmp_path)


def test_unwritable_cache_dir(tmp_path, good):
    blocker = _write(tmp_path, "a_file", "")  # a file where a directory would have to be (root ignores modes)
    out, cache = _run(tmp_path, good, [], cache=blocker / "cache")
    _check(out, cache, "is not a directory; point it at a directory you can write to", tmp_path)
    assert blocker.is_file() and blocker.read_text() == ""


@pytest.mark.slow
def test_unwritable_run_dir(tmp_path, good):
    blocker = _write(tmp_path, "a_file", "")
    out, cache = _run(tmp_path, good, [f"hydra.run.dir={blocker}/run"])
    _check(out, cache, str(blocker), tmp_path)


# ----------------------------------------------------------------------------------------------- hub, offline
def _empty_hf_home(tmp: Path) -> dict:
    (tmp / "hf_home").mkdir()
    return {
        "HF_HOME": str(tmp / "hf_home"),
        "HF_HUB_CACHE": str(tmp / "hf_home" / "hub"),
        "HF_DATASETS_CACHE": str(tmp / "hf_home" / "datasets"),
    }


@pytest.mark.slow
def test_hub_model_offline_and_not_cached(tmp_path, good):
    """The paper's model on an offline compute node with an empty cache: the cause and the command to run."""
    out, cache = _run(
        tmp_path, good, ["model=llama3_8b"], local_data=False, local_model=False, env=_empty_hf_home(tmp_path)
    )
    _check(out, cache, "model 'meta-llama/Meta-Llama-3-8B' is not in the local Hugging Face cache", tmp_path)
    assert "run: hf download meta-llama/Meta-Llama-3-8B" in out.stderr and "HF_HUB_OFFLINE=1" in out.stderr


def test_hub_dataset_offline_and_not_cached(tmp_path, good):
    out, cache = _run(tmp_path, good, ["dataset=medqa"], local_data=False, env=_empty_hf_home(tmp_path))
    _check(out, cache, "dataset 'GBaker/MedQA-USMLE-4-options' is not in the local Hugging Face cache", tmp_path)
    assert "datasets.load_dataset('GBaker/MedQA-USMLE-4-options', split='train')" in out.stderr
