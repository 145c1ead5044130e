"""kaft.sweep.summary: one table for a sweep directory (no Hydra needed), plus the callback on a fake config; the
results contract it reads through (kaft.results: walking a sweep, reading a job, one flat row per job)."""

from __future__ import annotations

import csv
import json

from omegaconf import OmegaConf

from kaft import results
from kaft.sweep.summary import SummaryCallback, format_table, summarize


def _job(sweep, num, odir, status="done", accs=None, average=None, hydra=True):
    d = sweep / f"{num}_{odir}"
    (d / ".hydra").mkdir(parents=True)
    overrides = odir.split(",") if odir else []
    if hydra:
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (d / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  overrides:\n    task:\n"
            + "".join(f"    - {o}\n" for o in overrides)
            + f"  job:\n    num: {num}\n    override_dirname: {odir}\n"
        )
    if status != "missing":
        res = {
            "overrides": overrides,
            "job": {"override_dirname": odir, "num": num},
            "status": status,
            "metrics": {"benchmarks": {k: {"acc": v} for k, v in (accs or {}).items()}, "average": average}
            if accs
            else None,
        }
        (d / "results.json").write_text(json.dumps(res))
    return d


def _sweep(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    # created out of order on purpose; job 10 sorts after job 2
    _job(sweep, 10, "alpha=0.5,loss=kaft", accs={"medqa": 0.5, "mmlu": 0.75}, average=0.625)
    _job(sweep, 0, "loss=sft", accs={"medqa": 0.25, "mmlu": 0.5}, average=0.375)
    _job(sweep, 2, "alpha=0.1,loss=kaft", status="failed")
    _job(sweep, 1, "alpha=0.1,loss=eaft", status="missing")
    (sweep / "1_alpha=0.1,loss=eaft" / "wandb" / "offline-run-x").mkdir(parents=True)  # not a job
    return sweep


def test_summarize_rows(tmp_path):
    rows = summarize(_sweep(tmp_path))
    assert [r["num"] for r in rows] == [0, 1, 2, 10]
    assert [r["status"] for r in rows] == ["done", "missing", "failed", "done"]
    assert rows[1]["override_dirname"] == "alpha=0.1,loss=eaft"  # from .hydra/hydra.yaml
    assert rows[1]["overrides"] == ["alpha=0.1", "loss=eaft"]
    assert rows[3]["accs"] == {"medqa": 0.5, "mmlu": 0.75} and rows[3]["average"] == 0.625
    assert rows[2]["accs"] == {} and rows[2]["average"] is None
    assert summarize(tmp_path / "nope") == []


def test_format_table(tmp_path):
    table = format_table(summarize(_sweep(tmp_path)))
    lines = table.splitlines()
    assert lines[0].split() == ["job", "overrides", "status", "medqa", "mmlu", "average"]
    assert lines[2].split() == ["0", "loss=sft", "done", "0.2500", "0.5000", "0.3750"]
    assert lines[3].split() == ["1", "alpha=0.1,loss=eaft", "missing", "-", "-", "-"]
    assert lines[4].split() == ["2", "alpha=0.1,loss=kaft", "failed", "-", "-", "-"]
    assert lines[5].split() == ["10", "alpha=0.5,loss=kaft", "done", "0.5000", "0.7500", "0.6250"]
    assert len(lines) == 6
    assert format_table([]) == "(no jobs)"


def test_missing_without_hydra_files_uses_dir_name(tmp_path):
    sweep = tmp_path / "sw"
    d = sweep / "3_lr=0.001"
    (d / ".hydra").mkdir(parents=True)
    rows = summarize(sweep)
    assert rows[0]["num"] == 3 and rows[0]["override_dirname"] == "lr=0.001" and rows[0]["status"] == "missing"


def test_callback_writes_csv_and_md(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SummaryCallback().on_multirun_end(config=cfg)
    out = capsys.readouterr().out
    assert out.count("average") == 1, "one table printed"
    assert "alpha=0.5,loss=kaft" in out and "missing" in out
    with open(sweep / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]
    assert rows[0]["override_dirname"] == "loss=sft" and float(rows[0]["acc/medqa"]) == 0.25
    assert rows[1]["status"] == "missing" and rows[1]["average"] == ""
    assert float(rows[3]["average"]) == 0.625
    md = (sweep / "summary.md").read_text()
    assert "| job | overrides | status | medqa | mmlu | average |" in md
    assert not [p for p in sweep.iterdir() if p.name.startswith(".summary")], "no temp files left"


def test_callback_never_raises(tmp_path):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "does-not-exist")}}})
    SummaryCallback().on_multirun_end(config=cfg)


APP = """
import json, os, hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(config_path=None, config_name=None, version_base="1.3")
def main(cfg):
    hc = HydraConfig.get()
    if cfg.alpha == 0.9:
        return  # a job that leaves no results.json
    res = {"overrides": list(hc.overrides.task), "status": "done",
           "job": {"override_dirname": hc.job.override_dirname, "num": hc.job.num},
           "metrics": {"benchmarks": {"b1": {"acc": cfg.alpha}}, "average": cfg.alpha}}
    with open(os.path.join(hc.runtime.output_dir, "results.json"), "w") as fh:
        json.dump(res, fh)

if __name__ == "__main__":
    main()
"""


def test_hydra_multirun_end_to_end(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "app.py").write_text(APP)
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "app.py",
            "-m",
            "+alpha=0.1,0.5,0.9",
            "+seed=0",
            "hydra.sweep.dir=sweep",
            "hydra.job.config.override_dirname.exclude_keys=[seed]",
            "+hydra.callbacks.summary._target_=kaft.sweep.summary.SummaryCallback",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "kaft sweep summary" in proc.stdout
    table = proc.stdout.split("kaft sweep summary", 1)[1].splitlines()
    assert table[1] == "shared overrides: +seed=0"  # shown once, not in every row
    assert table[2].split() == ["job", "overrides", "status", "b1", "average"]
    assert table[4].split() == ["0", "+alpha=0.1", "done", "0.1000", "0.1000"]
    assert table[6].split() == ["2", "+alpha=0.9", "missing", "-", "-"]
    assert (tmp_path / "sweep" / "summary.csv").exists() and (tmp_path / "sweep" / "summary.md").exists()


def test_results_contract_walks_and_reads_jobs(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    names = [d.name for d in results.job_dirs(sweep)]
    assert names == ["0_loss=sft", "10_alpha=0.5,loss=kaft", "1_alpha=0.1,loss=eaft", "2_alpha=0.1,loss=kaft"]
    assert results.read_results(sweep / "1_alpha=0.1,loss=eaft") is None  # no results.json (wandb/ is no job)
    assert results.hydra_job(sweep / "1_alpha=0.1,loss=eaft") == {
        "num": 1,
        "override_dirname": "alpha=0.1,loss=eaft",
        "overrides": ["alpha=0.1", "loss=eaft"],
    }
    bad = sweep / "3_x"
    (bad / ".hydra").mkdir(parents=True)
    (bad / "results.json").write_text("[1, 2]")
    assert results.read_results(bad) is None
    assert results.load_results(bad) == (None, "results.json: not a JSON object")
    (bad / "error.txt").write_text("Traceback ...\n  File x\nValueError: boom\n\n")
    assert results.error_last_line(bad) == "ValueError: boom" and results.error_last_line(sweep) == ""

    # a folder holding a sweep and a single run: one row per readable results.json, the run dir found as itself
    run = tmp_path / "multirun" / "run_a"
    (run / ".hydra").mkdir(parents=True)
    (run / "results.json").write_text(
        json.dumps(
            {
                "status": "done",
                "config": {"loss": {"name": "kaft", "alpha": 0.3}, "seed": 1},
                "metrics": {"benchmarks": {"b": {"acc": 0.5}}, "average": 0.5},
                "timings": {"train": 2.0},
                "job": {"run_dir": str(run)},
            }
        )
    )
    frame = results.sweep_frame(tmp_path / "multirun")
    assert "skipping" in capsys.readouterr().err  # 3_x's unreadable results.json
    assert [p.split("/")[-1] for p in frame["job_dir"]] == [
        "0_loss=sft",
        "10_alpha=0.5,loss=kaft",
        "2_alpha=0.1,loss=kaft",
        "run_a",
    ]
    assert list(frame["status"]) == ["done", "done", "failed", "done"]
    row = frame.iloc[3]
    assert (row["loss"], row["alpha"], row["seed"], row["acc/b"], row["time/train"]) == ("kaft", 0.3, 1, 0.5, 2.0)
    assert list(frame.columns[:3]) == ["loss", "alpha", "beta"] and frame.columns[-1] == "job_dir"
    assert len(results.sweep_frame(run)) == 1 and results.sweep_frame(run)["job_dir"][0] == str(run)
    empty = results.sweep_frame(tmp_path / "nothing")
    assert empty.empty and {"loss", "average", "run_dir", "job_dir"} <= set(empty.columns)


def test_paper_table_callback_writes_the_table_and_never_raises(tmp_path, capsys):
    from analysis.callback import PaperTableCallback

    sweep = tmp_path / "sweep"
    for i, loss in enumerate(["constant", "kaft"]):
        d = sweep / f"{i}_loss={loss}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(
            json.dumps(
                {
                    "status": "done",
                    "overrides": [f"loss={loss}"],
                    "config": {"loss": {"name": loss}, "strategy": {"name": "full"}, "seed": 0},
                    "metrics": {"benchmarks": {"b": {"acc": 0.5 + i / 10}}, "average": 0.5 + i / 10},
                }
            )
        )
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "logger": {"name": "none"}})
    PaperTableCallback().on_multirun_end(config=cfg)
    assert (sweep / "paper_table.md").exists() and (sweep / "paper_table.csv").exists()
    assert "kaft paper table: paper_table.md/.csv in" in capsys.readouterr().out
    PaperTableCallback().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "no")}}}))
    assert capsys.readouterr().out == ""  # no jobs: nothing written, nothing said
