"""The whole job through the real CLI on a tiny random model saved to disk (model=local) and local data files:
every stage runs, results.json is complete, a second run is all cache hits, and changing the loss re-trains but
reuses detection. Each job is a subprocess (seconds of imports), so all are slow: in plain pytest, not the quick
loop; the testbed runs live in test_e2e.py."""

import json
import os
import subprocess
import sys

import pytest
from helpers import tiny_job_args, write_tiny_job


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_job(tmp_path_factory.mktemp("pipe"), test_format="csv")


def _kaft(root, *args):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    base = tiny_job_args(root, "test.csv")
    flags = [a for a in args if a == "-m"]  # Hydra flags go before the overrides
    args = [a for a in args if a != "-m"]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *flags, *base, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_pipeline_runs_caches_and_logs(setup):
    _kaft(setup, "hydra.run.dir=r1", "logger=wandb")
    r1 = json.loads((setup / "r1" / "results.json").read_text())
    assert r1["status"] == "done" and r1["data"]["n_train"] == 12 and r1["data"]["n_eval"] == {"test": 6}
    assert r1["subsets"] == {"wrong": 3, "might-wrong": 3, "might-right": 3, "right": 3}
    assert r1["weights_by_subset"] == pytest.approx(
        {"wrong": 0.1, "might-wrong": 0.5, "might-right": 1.0, "right": 1.0}
    )
    assert set(r1["cache"].values()) == {"miss"}
    assert 0 <= r1["metrics"]["benchmarks"]["test"]["acc"] <= 1 and r1["metrics"]["benchmarks"]["test"]["n"] == 6
    assert r1["versions"]["torch"] and r1["config"]["loss"]["name"] == "kaft"
    assert list((setup / "r1" / "wandb").glob("offline-run-*"))

    out = _kaft(setup, "hydra.run.dir=r2")
    r2 = json.loads((setup / "r2" / "results.json").read_text())
    assert set(r2["cache"].values()) == {"hit"} and r2["metrics"] == r1["metrics"]
    assert "loaded model" not in out.stdout + out.stderr  # a fully cached re-run never loads the model

    _kaft(setup, "hydra.run.dir=r3", "loss=constant")
    r3 = json.loads((setup / "r3" / "results.json").read_text())
    assert r3["cache"] == {"detect": "hit", "evaluate_base": "hit", "train": "miss", "evaluate": "miss"}
    assert r3["cache_keys"]["detect"] == r1["cache_keys"]["detect"]
    assert r3["cache_keys"]["train"] != r1["cache_keys"]["train"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_two_by_two_multirun_shares_detection(setup, launcher):
    """The mission command's shape (-m loss=kaft,eaft alpha=0.1,0.5) on both launchers: 4 jobs, one detection.
    On the basic launcher it comes from sweeps/mission.yaml (+sweeps=mission: the same four jobs, so this is also
    that file's run of tests/cli/test_sweeps.py, which leaves it out): its paper table is the losses layout."""
    sweep = f"sweep_{launcher}"
    grid = ["+sweeps=mission"] if launcher == "basic" else ["loss=kaft,eaft", "alpha=0.1,0.5"]
    args = [
        "-m",
        *grid,
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
        "logger=wandb",
    ]
    if launcher == "submitit_local":
        args += ["hydra.launcher.timeout_min=20", "hydra.launcher.cpus_per_task=1"]
    out = _kaft(setup, *args)
    res = [json.loads(p.read_text()) for p in sorted((setup / sweep).rglob("results.json"))]
    assert len(res) == 4 and all(r["status"] == "done" for r in res)
    assert {(r["config"]["loss"]["name"], r["config"]["alpha"]) for r in res} == {
        ("kaft", 0.1),
        ("kaft", 0.5),
        ("eaft", 0.1),
        ("eaft", 0.5),
    }
    used = {
        (
            r["config"]["loss"]["name"],
            r["config"]["loss"]["alpha" if r["config"]["loss"]["name"] == "kaft" else "eaft_alpha"],
        )
        for r in res
    }
    assert used == {("kaft", 0.1), ("kaft", 0.5), ("eaft", 0.1), ("eaft", 0.5)}  # the swept alpha reached each loss
    assert len({r["cache_keys"]["detect"] for r in res}) == 1  # one detection for the sweep
    assert len({r["cache_keys"]["train"] for r in res}) == 4
    assert (setup / sweep / "summary.csv").exists() and "kaft sweep summary" in out.stdout
    runs = list((setup / sweep).rglob("offline-run-*"))
    assert len([r for r in runs if r.parent.parent != setup / sweep]) == 4  # one W&B run per job
    assert len(list((setup / sweep / "wandb").glob("offline-run-*"))) == 1  # and one for the sweep's paper table
    assert "logged to W&B as table_losses" in out.stdout
    table = (setup / sweep / "paper_table.md").read_text()  # the sweep-end callback's table, one row per job
    assert (setup / sweep / "summary.md").exists() and "losses layout" in out.stdout and table.count("\n| ") >= 5


@pytest.mark.slow
def test_finished_job_is_skipped_unless_forced(setup):
    """The run directory is derived from the overrides, so the same command finds its finished job and skips it."""
    first = _kaft(setup, "loss=constant")
    dirs = list((setup / "outputs").glob("run_*"))
    assert len(dirs) == 1 and (dirs[0] / "results.json").exists()
    saved = (dirs[0] / "results.json").read_text()
    again = _kaft(setup, "loss=constant")
    log = again.stdout + again.stderr
    assert "already complete" in log and (dirs[0] / "results.json").read_text() == saved
    assert "loaded model" not in log and "average" in first.stdout and "average" in again.stdout
    forced = _kaft(setup, "loss=constant", "force=true")
    assert "already complete" not in forced.stdout + forced.stderr
    other_seed = _kaft(setup, "loss=constant", "seed=1")  # seed is not in the dir name: the hash is
    assert (
        "already complete" not in other_seed.stdout + other_seed.stderr
        and len(list((setup / "outputs").glob("run_*"))) == 2
    )


@pytest.mark.slow
def test_strategies_and_fine_grained_evaluation(setup):
    """Each data strategy through the CLI: the selection lands in results.json, `none` trains nothing and reports
    the base model, and fine-grained evaluation reports accuracy per conflict subset of the probed test set."""
    sweep = "sweep_strategies"
    _kaft(
        setup,
        "-m",
        "strategy=none,no_conflict,self_align,wrong_ratio",
        "loss=constant",
        "evaluation.fine_grained=true",
        f"hydra.sweep.dir={sweep}",
    )
    res = {
        r["config"]["strategy"]["name"]: r
        for r in (json.loads(p.read_text()) for p in (setup / sweep).rglob("results.json"))
    }
    assert set(res) == {"none", "no_conflict", "self_align", "wrong_ratio"}
    assert res["none"]["metrics"] == res["none"]["base_metrics"] and "train" not in res["none"]["cache"]
    assert (
        res["no_conflict"]["strategy"]["n_kept"] == 9 and res["no_conflict"]["strategy"]["kept_by_subset"]["wrong"] == 0
    )
    assert res["wrong_ratio"]["strategy"]["wrong_kept"] == 2  # round(0.5 * 3) with halves up
    assert res["self_align"]["strategy"]["n_kept"] == 12
    # KaFT §2.2's r_i: the sampled probe holds no greedy answer, so one exact pass over the original order adds it
    assert res["self_align"]["strategy"]["answer_source"] == "greedy" and "greedy" in res["self_align"]["cache"]
    for r in res.values():
        fg = r["fine_grained"]["test"]
        assert sum(v["n"] for v in fg["base"].values()) == 6  # every test item lands in one subset
        assert "items" not in r["metrics"]["benchmarks"]["test"]  # per-item rows stay out of results.json
    keys = {r["cache_keys"]["train"] for r in res.values()}
    assert len(keys) == 4 and None in keys


@pytest.mark.slow
def test_every_loss_runs_end_to_end(setup):
    """dft, kaft_eaft, sft_kl, sft_self and dpo (SMA's own samples; and pairs from the probe's samples) through the
    CLI; dpo on the probe's samples with an estimator that saves none is a config error before any model loads."""
    sweep = "sweep_losses"
    _kaft(setup, "-m", "loss=dft,kaft_eaft,dpo,auto_adapt,sft_kl,sft_self", f"hydra.sweep.dir={sweep}")
    res = {
        r["config"]["loss"]["name"]: r
        for r in (json.loads(p.read_text()) for p in (setup / sweep).rglob("results.json"))
    }
    assert set(res) == {"dft", "kaft_eaft", "dpo", "auto_adapt", "sft_kl", "sft_self"}
    assert all(r["status"] == "done" for r in res.values())
    assert "dpo_samples" not in res["dft"]["cache"]
    # sft_self samples at DPO's settings: one of the two computes the samples, the other reuses them
    assert {res["dpo"]["cache"]["dpo_samples"], res["sft_self"]["cache"]["dpo_samples"]} == {"miss", "hit"}
    _kaft(setup, "loss=dpo", "loss.pair_source=detection", "loss.pairs=dataset_self", "hydra.run.dir=dpo_detection")
    det = json.loads((setup / "dpo_detection" / "results.json").read_text())
    assert det["status"] == "done" and "dpo_samples" not in det["cache"]
    env = {**os.environ, "KAFT_CACHE_DIR": str(setup / "cache_dpo_err"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaft.run",
            "loss=dpo",
            "loss.pair_source=detection",
            "detection.estimator=exact",
            "model=local",
            f"model.path={setup / 'model'}",
            "dataset=local",
            f"dataset.train.path={setup / 'train.jsonl'}",
            f"dataset.eval.test.path={setup / 'test.csv'}",
        ],
        cwd=setup,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "loss=dpo needs the model's sampled answers" in out.stderr
    assert not (setup / "cache_dpo_err" / "detect").exists()
