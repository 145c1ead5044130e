"""``python -m kaft.export``: a real smoke sweep on a tiny saved model (sampled and exact detection x two losses), its
export loaded back with ``datasets.load_from_disk`` / pandas and checked against each job's results.json; bad input
ends in one ``kaft: error:`` line with nothing written."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_model, tiny_train_rows

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "docs" / "export.md"  # the recipes moved from README to the docs


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "KAFT_CACHE_DIR": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four finished jobs: detection.estimator=sample|exact x loss=kaft|constant (two detections, shared)."""
    root = tmp_path_factory.mktemp("export")
    save_tiny_model(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_train_rows(12)))
    args = [
        "-m",
        "model=local",
        f"model.path={root / 'model'}",
        "dataset=local",
        f"dataset.train.path={root / 'train.jsonl'}",
        f"dataset.eval.test.path={root / 'train.jsonl'}",
        "experiment=smoke",
        "logger=none",
        "progress=false",
        "detection.shots=2",
        "train.batch_size=4",
        "train.max_length=256",
        "evaluation.batch_size=4",
        "detection.estimator=sample,exact",
        "loss=kaft,constant",
        "hydra.sweep.dir=sweep",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *args], cwd=root, env=_env(root), capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return root


def _export(root: Path, *args: str):
    return subprocess.run(
        [sys.executable, "-m", "kaft.export", *map(str, args)],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _jobs(root: Path) -> dict[str, tuple[Path, dict]]:
    return {
        d.name: (d, json.loads((d / "results.json").read_text()))
        for d in sorted((root / "sweep").iterdir())
        if (d / "results.json").exists()
    }


def _check_against_results(export_dir: Path, res: dict) -> list[dict]:
    """The export, read back three ways, agrees with the job's results.json."""
    import datasets
    import pandas as pd

    ds = datasets.load_from_disk(str(export_dir / "dataset"))
    rows = ds.to_list()
    assert len(rows) == res["data"]["n_train"] == 12
    assert {n: sum(r["subset_name"] == n for r in rows) for n in res["subsets"]} == res["subsets"]
    by = {n: [r for r in rows if r["subset_name"] == n] for n in res["subsets"]}
    for name, want in res["detection"]["mean_by_subset"].items():
        assert statistics.fmean(r["score"] for r in by[name]) == pytest.approx(want, abs=1e-12)
    assert statistics.fmean(r["score"] for r in rows) == pytest.approx(res["detection"]["mean"], abs=1e-12)
    for name, want in res["weights_by_subset"].items():  # strategy=full: every item trained with its reward
        assert [r["reward"] for r in by[name]] == pytest.approx([want] * len(by[name]))
    for r in rows:
        assert r["options"][r["answer"]] and r["completion"] == " " + r["answer_letter"]
        assert r["prompt"].endswith("Answer:") and r["question"] in r["prompt"]
        assert r["score"] == pytest.approx(r["answer_dist"][r["answer"]], abs=1e-9)  # Score = P(gold)
        assert sum(r["answer_dist"]) <= 1 + 1e-6 and len(r["answer_dist"]) == len(r["options"])
    assert pd.read_parquet(export_dir / "train.parquet").to_dict("records")[0]["id"] == rows[0]["id"]
    jsonl = [json.loads(line) for line in (export_dir / "train.jsonl").read_text().splitlines()]
    assert jsonl == rows
    return rows


def test_export_of_one_run_matches_results(sweep):
    jobs = _jobs(sweep)
    name = next(
        n
        for n, (_, r) in jobs.items()
        if r["config"]["detection"]["estimator"] == "sample" and r["config"]["loss"]["name"] == "kaft"
    )
    run_dir, res = jobs[name]
    out = _export(sweep, run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _check_against_results(run_dir / "export", res)
    assert {r["dist_source"] for r in rows} == {"samples"} and {r["n_samples"] for r in rows} == {2 * 2}
    assert sorted({r["kaft_reward"] for r in rows}) == pytest.approx([0.1, 0.5, 1.0])
    info = json.loads((run_dir / "export" / "export.json").read_text())
    assert info["cache_keys"]["detect"] == res["cache_keys"]["detect"] and info["n_items"] == 12
    again = _export(sweep, run_dir)  # an export is never overwritten silently
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    assert _export(sweep, run_dir, "--force").returncode == 0 and not list(run_dir.glob(".export.*"))


def test_export_of_a_sweep_one_per_job(sweep):
    out_dir = sweep / "sweep_export"
    out = _export(sweep, sweep / "sweep", "--out", out_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    index = json.loads((out_dir / "index.json").read_text())
    jobs = _jobs(sweep)
    assert sorted(e["dir"] for e in index["exports"]) == sorted(jobs) and index["skipped"] == []
    rows = {n: _check_against_results(out_dir / n, r) for n, (_, r) in jobs.items()}
    for n, (_, res) in jobs.items():
        est = res["config"]["detection"]["estimator"]
        assert {r["dist_source"] for r in rows[n]} == {"samples" if est == "sample" else "exact"}
        if res["config"]["loss"]["name"] == "constant":
            assert {r["reward"] for r in rows[n]} == {1.0}
    by_detect: dict[str, list[str]] = {}
    for n, (_, res) in jobs.items():
        by_detect.setdefault(res["cache_keys"]["detect"], []).append(n)
    assert len(by_detect) == 2
    for a, b in by_detect.values():  # jobs sharing a detection share scores, subsets and answers
        cols = ("id", "score", "subset", "answer_dist", "majority_answer")
        assert [{c: r[c] for c in cols} for r in rows[a]] == [{c: r[c] for c in cols} for r in rows[b]]


def _one_error(out, message: str) -> None:
    errors = [line for line in out.stderr.splitlines() if line.startswith("kaft: error:")]
    assert out.returncode == 2 and len(errors) == 1 and message in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_bad_input_one_line_nothing_written(sweep, tmp_path):
    (tmp_path / "empty").mkdir()
    out = _export(sweep, tmp_path / "empty")
    _one_error(out, "not a kaft run or sweep directory")
    _one_error(_export(sweep, tmp_path / "nope"), "no such directory")
    run_dir = next(iter(_jobs(sweep).values()))[0]
    target = tmp_path / "out" / "exp"
    out = _export(sweep, run_dir, "--out", target, "--cache-dir", tmp_path / "empty_cache")
    _one_error(out, "is not in the cache at")
    assert "--cache-dir" in out.stderr and "force=true" in out.stderr
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []  # no temp dir left either


def _copy_job(run_dir: Path, dest: Path, edit) -> Path:
    res = json.loads((run_dir / "results.json").read_text())
    edit(res)
    dest.mkdir()
    (dest / "results.json").write_text(json.dumps(res))
    return dest


def test_changed_data_or_a_failed_job_is_refused(sweep, tmp_path):
    run_dir = next(iter(_jobs(sweep).values()))[0]
    rows = tiny_train_rows(12)
    rows[5]["question"] = "What is the capital of Zorvia 5, edited ?"
    (tmp_path / "edited.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    moved = _copy_job(
        run_dir,
        tmp_path / "moved",
        lambda r: r["config"]["dataset"]["train"].update(path=str(tmp_path / "edited.jsonl")),
    )
    _one_error(_export(sweep, moved), "the training data changed since the job ran")
    failed = _copy_job(run_dir, tmp_path / "failed", lambda r: r.update(status="failed"))
    _one_error(_export(sweep, failed), "the job did not finish (status 'failed'; see error.txt)")
    assert not (moved / "export").exists() and not (failed / "export").exists()


def _readme_recipe(sweep, tmp_path, marker: str) -> str:
    """The README's ``<!-- marker -->`` recipe, pointed at a real export of the sweep's first job in ``tmp_path``."""
    run_dir = next(iter(_jobs(sweep).values()))[0]
    out = _export(sweep, run_dir, "--out", tmp_path / "export")
    assert out.returncode == 0, out.stderr[-3000:]
    block = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, f"README has no {marker} recipe"
    return block.group(1).replace("outputs/my_run/export", str(tmp_path / "export"))


def test_readme_llamafactory_snippet_runs(sweep, tmp_path):
    """The README's LLaMA-Factory recipe, run as written on a real export: an alpaca file without the wrong subset
    and a dataset_info entry that points at it."""
    code = _readme_recipe(sweep, tmp_path, "llamafactory")
    code = code.replace("LLaMA-Factory/data", str(tmp_path / "lf_data"))
    (tmp_path / "lf_data").mkdir()
    (tmp_path / "lf_data" / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "x.json"}}))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    info = json.loads((tmp_path / "lf_data" / "dataset_info.json").read_text())
    assert "other" in info and info["kaft_no_conflict"]["file_name"] == "kaft_no_conflict.json"
    data = json.loads((tmp_path / "lf_data" / "kaft_no_conflict.json").read_text())
    assert len(data) == 12 - 3 and all(set(d) == {"instruction", "input", "output"} for d in data)
    assert all(d["instruction"].endswith("Answer:") and len(d["output"].strip()) == 1 for d in data)


def test_readme_trl_snippet_runs(sweep, tmp_path):
    """The README's TRL recipe, run as written (one step each, on the CPU) on a real export and the tiny model:
    the filtered set trains, and the rewards reach the weighted loss."""
    code = _readme_recipe(sweep, tmp_path, "trl")
    code = code.replace("meta-llama/Meta-Llama-3-8B", str(sweep / "model"))
    code = code.replace("SFTConfig(", "SFTConfig(max_steps=1, use_cpu=True, bf16=False, report_to=[], ")
    code += "\nprint('LOSS', trainer.state.log_history[-1]['train_loss'])\n"
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**_env(sweep), "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    loss = float(run.stdout.split("LOSS")[-1])
    assert loss > 0 and (tmp_path / "sft_no_conflict").is_dir() and (tmp_path / "sft_kaft").is_dir()
