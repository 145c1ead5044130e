"""The sweep receipt (kaft/sweep/receipt.py) serves a finished sweep's re-run only when nothing it depends on
changed: every change below — a conf file, a sweep file, an override, a data file, an environment variable, a
results.json, a file in the sweep dir — falls through to the normal path, and the served path imports no Hydra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaft.sweep import receipt

ROOT = Path(__file__).resolve().parents[3]


def _results(data: Path, **over) -> dict:
    res = {
        "status": "done",
        "metrics": {"average": 0.5},
        "config": {
            "dataset": {"train": {"source": "local", "path": str(data)}, "eval": {"b": {"source": "testbed"}}},
            "model": {"source": "testbed"},
            "logger": {"name": "none"},
        },
    }
    res.update(over)
    return res


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """A fake repository (conf/, sweeps/, kaft/), a data file and a finished two-job sweep with its receipt."""
    repo = tmp_path / "repo"
    for rel, text in {
        "conf/config.yaml": "cache_dir: ${oc.env:KAFT_CACHE_DIR}\ndata: ${oc.env:MY_DATA,data}\n",
        "sweeps/s.yaml": "hydra: {}\n",
        "kaft/x.py": "X = 1\n",
    }.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    monkeypatch.setenv("KAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(receipt.OFF, raising=False)
    monkeypatch.setenv("MY_DATA", "d1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(receipt, "STATE", {"key": None, "start_ns": None, "tee": None})
    data = tmp_path / "train.jsonl"
    data.write_text('{"q": 1}\n')
    sweep_dir = tmp_path / "sweep"
    for n in range(2):
        (sweep_dir / str(n)).mkdir(parents=True)
        (sweep_dir / str(n) / "results.json").write_text(json.dumps(_results(data)))
    (sweep_dir / "summary.md").write_text("table\n")
    argv = ["kaft.run", "-m", "loss=kaft,eaft", f"hydra.sweep.dir={sweep_dir}"]
    assert receipt.serve(argv, repo) is None  # no receipt yet: the normal path runs (and the key is remembered)
    assert receipt.write(str(sweep_dir), "TABLE\n", timeless=True, failed=0) is not None
    return {"repo": repo, "argv": argv, "dir": sweep_dir, "data": data, "mp": monkeypatch}


def served(s, argv=None) -> bool:
    try:
        receipt.serve(argv or s["argv"], s["repo"])
    except SystemExit as e:
        assert e.code == 0
        return True
    return False


def test_an_unchanged_rerun_is_served_with_the_printed_summary(sweep, capsys):
    assert served(sweep)
    out = capsys.readouterr()
    assert out.out == "TABLE\n" and "served from the sweep receipt" in out.err


@pytest.mark.parametrize("rel", ["conf/config.yaml", "sweeps/s.yaml", "kaft/x.py", "conf/new.yaml"])
def test_a_changed_config_sweep_or_code_file_falls_through(sweep, rel):
    (sweep["repo"] / rel).write_text("changed: 1\n")
    assert not served(sweep)


def test_another_override_or_flag_falls_through(sweep):
    assert not served(sweep, [*sweep["argv"], "alpha=0.5"])
    assert not served(sweep, [*sweep["argv"], "--cfg", "job"])
    assert not served(sweep, [a for a in sweep["argv"] if a != "-m"])  # one run, not a sweep
    assert not served(sweep, [*sweep["argv"], "hydra.searchpath=[file:///x]"])


def test_a_changed_data_file_falls_through(sweep):
    sweep["data"].write_text('{"q": 2}\n')
    assert not served(sweep)


@pytest.mark.parametrize("name", ["MY_DATA", "KAFT_DATA_DIR", "PYTHONPATH"])
def test_a_changed_environment_variable_falls_through(sweep, name):
    sweep["mp"].setenv(name, "elsewhere")
    assert not served(sweep)


def test_kaft_no_receipt_falls_through(sweep):
    sweep["mp"].setenv(receipt.OFF, "1")
    assert not served(sweep)


def test_a_results_json_with_other_content_falls_through_even_at_the_same_size_and_mtime(sweep):
    path = sweep["dir"] / "0" / "results.json"
    st = path.stat()
    text = path.read_text()
    path.write_text(text.replace("0.5", "0.6"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not served(sweep)


def test_a_file_added_or_removed_in_the_sweep_dir_falls_through(sweep):
    (sweep["dir"] / "summary.md").unlink()
    assert not served(sweep)


def _write_again(sweep, *, failed=0, timeless=True, **res) -> Path | None:
    for n in range(2):
        (sweep["dir"] / str(n) / "results.json").write_text(json.dumps(_results(sweep["data"], **res)))
    return receipt.write(str(sweep["dir"]), "T\n", timeless=timeless, failed=failed)


@pytest.mark.parametrize(
    "kw",
    [
        {"failed": 1},
        {"timeless": False},
        {"status": "failed"},
        {"config": {"logger": {"name": "wandb"}}},
        {"config": {"dataset": {"train": {"source": "hub", "path": "x/y"}}, "logger": {"name": "none"}}},
    ],
)
def test_no_receipt_for_a_failed_time_dependent_logged_or_hub_sweep(sweep, kw):
    assert _write_again(sweep, **kw) is None


def test_no_receipt_when_a_data_file_changed_while_the_sweep_ran(sweep):
    sweep["data"].write_text('{"q": 3}\n')  # after serve() recorded the start
    assert _write_again(sweep) is None


WRITE = """
import sys, runpy
from kaft.sweep import receipt
sys.argv = ["kaft.run", "-m", "loss=kaft", "hydra.sweep.dir=" + sys.argv[1]]
receipt.serve(sys.argv)
assert receipt.write(sys.argv[-1].split("=", 1)[1], "TABLE\\n", timeless=True, failed=0)
"""
SERVE = """
import atexit, sys, runpy
atexit.register(lambda: print("heavy:", sorted(m for m in ("hydra", "omegaconf", "torch", "yaml") if m in sys.modules)))
sys.argv = ["kaft.run", "-m", "loss=kaft", "hydra.sweep.dir=" + sys.argv[1]]
runpy.run_module("kaft.run", run_name="__main__")
"""


def test_the_served_rerun_imports_neither_hydra_nor_torch(tmp_path):
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0").mkdir(parents=True)
    res = _results(tmp_path / "none")
    res["config"]["dataset"]["train"] = {"source": "testbed"}
    (sweep_dir / "0" / "results.json").write_text(json.dumps(res))
    env = {**os.environ, "KAFT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop(receipt.OFF, None)
    for script in (WRITE, SERVE):
        out = subprocess.run(
            [sys.executable, "-c", script, str(sweep_dir)], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("TABLE\n") and "heavy: []" in out.stdout, out.stdout + out.stderr
    assert "served from the sweep receipt" in out.stderr


@pytest.mark.parametrize(
    ("sweeper", "dir_name", "vouchable"),
    [
        ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "multirun/s", True),
        ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "multirun/${now:%H-%M-%S}", False),
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "multirun/s", False),
    ],
)
def test_only_a_basic_sweepers_timeless_sweep_gets_a_receipt(sweeper, dir_name, vouchable):
    """A search sweeper (Optuna) picks its trials from what it saw, and a dir named by the time is a new sweep:
    neither is the same jobs again, so neither may be answered from a receipt."""
    from omegaconf import OmegaConf

    from kaft.sweep.summary import _timeless

    cfg = OmegaConf.create({"hydra": {"sweeper": {"_target_": sweeper}, "sweep": {"dir": dir_name}}})
    assert _timeless(cfg) is vouchable
