"""kaft.sweep.preflight: every job of a sweep expanded as the basic sweeper will, every invalid one reported in one
line, a run dir holding another run's results refused on its config alone; kaft.sweep.plan shares the check and exits
non-zero when it lists a problem. Configs are composed from conf/ over a tiny saved model and local data."""

from __future__ import annotations

import json

import pytest

from kaft import identity
from kaft.sweep import plan, preflight


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import write_tiny_job

    return write_tiny_job(tmp_path_factory.mktemp("preflight"))


def _args(tiny, tmp_path, *args):
    return [
        "model=local",
        f"model.path={tiny / 'model'}",
        "dataset=local",
        f"dataset.train.path={tiny / 'train.jsonl'}",
        f"dataset.eval.test.path={tiny / 'test.jsonl'}",
        f"cache_dir={tmp_path / 'cache'}",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *args,
    ]


def test_every_invalid_job_of_a_sweep_in_one_line(tiny, tmp_path):
    jobs = plan.compose_jobs(_args(tiny, tmp_path, "loss=kaft,eaft", "alpha=0.1,2", "train.lr=1e-3,-1"), True)
    assert len(jobs) == 8 and [n for n, _, _ in jobs] == list(range(8))
    line = preflight.sweep_problems(jobs)
    assert line.startswith("5 of 8 jobs are invalid: job 1 (loss=kaft alpha=0.1 train.lr=-1): train.lr must be > 0")
    assert "job 2 (loss=kaft alpha=2 train.lr=0.001): loss kaft: 'alpha' must be in [0, 1], got 2" in line
    assert "job 4 (loss=eaft" not in line and line.count("; job ") == 4
    assert preflight.sweep_problems(plan.compose_jobs(_args(tiny, tmp_path, "loss=kaft,eaft"), True)) is None
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()


def test_check_job_config_runs_the_train_checks_before_any_data(tiny, tmp_path):
    ((_, _, cfg),) = plan.compose_jobs(_args(tiny, tmp_path, "train.lr_scheduler=cosine_typo"), False)
    with pytest.raises(Exception, match="train.lr_scheduler must be one of"):
        preflight.check_job_config(preflight.task_config(cfg))
    ((_, _, ok),) = plan.compose_jobs(
        _args(tiny, tmp_path, "partition.k=100000", "loss=constant", "detection.shots=50"), False
    )
    preflight.check_job_config(preflight.task_config(ok))  # the data-size checks are the job's


def test_a_finished_run_dir_of_another_config_is_refused(tiny, tmp_path):
    ((_, _, cfg),) = plan.compose_jobs(_args(tiny, tmp_path), False)
    run = tmp_path / "run"
    assert preflight.run_dir(cfg, False) == run
    assert preflight.job_problems(cfg, False) == (None, None, run)  # nothing there yet
    part = identity.config_part(preflight.task_config(cfg), None)
    run.mkdir()
    (run / "results.json").write_text(
        json.dumps({"status": "done", "metrics": {"average": 0.5}, "identity": identity.make(part, {}, "m")})
    )
    assert preflight.job_problems(cfg, False) == (None, None, run)  # the same config: the job compares the rest
    ((_, _, seed1),) = plan.compose_jobs(_args(tiny, tmp_path, "seed=1"), False)
    assert preflight.job_problems(seed1, False) == (None, "seed 0 -> 1, testbed.seed 0 -> 1", run)
    ((_, _, forced),) = plan.compose_jobs(_args(tiny, tmp_path, "seed=1", "force=true"), False)
    assert preflight.job_problems(forced, False)[1] is None
    (run / "results.json").write_text(json.dumps({"status": "failed", "metrics": None}))
    assert preflight.job_problems(seed1, False)[1] is None  # no numbers there: the job re-runs it


def test_plan_exits_non_zero_when_it_lists_a_problem(tiny, tmp_path, capsys):
    assert plan.main(_args(tiny, tmp_path, "-m", "alpha=0.1,2")) == 1
    out = capsys.readouterr().out
    assert "problem     config: loss kaft: 'alpha' must be in [0, 1], got 2" in out
    assert plan.main(_args(tiny, tmp_path, "-m", "alpha=0.1,0.5")) == 0


def test_the_sweeper_and_launcher_reuse_the_preflight_compositions(tiny, tmp_path):
    """Hydra composes each job again in validate_batch_is_legal and launch; after expand() the loader answers those
    calls with a copy of the preflight's composition: equal to a fresh one, a new object each call (a job's edits do
    not leak into the next), and overrides it did not compose are composed as before."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(plan.CONF), version_base="1.3", job_name="run"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", _args(tiny, tmp_path, "loss=kaft,eaft"), run_mode=RunMode.MULTIRUN)
        jobs = preflight.expand(loader, master)
        fresh = loader.load_sweep_config._kaft_compose
        calls = []
        loader.load_sweep_config._kaft_compose = lambda m, ov: calls.append(ov) or fresh(m, ov)
        preflight.share_compositions(loader, master, {tuple(ov): cfg for _, ov, cfg in jobs})
        for _, ov, _ in jobs:
            a, b = loader.load_sweep_config(master, ov), loader.load_sweep_config(master, ov)
            assert a is not b
            want = fresh(master, ov)
            for c in (a, b):
                c.hydra.job.id = c.hydra.job.num = want.hydra.job.id = want.hydra.job.num = 0
            assert OmegaConf.to_container(a) == OmegaConf.to_container(want)
        assert calls == []  # no job was composed again
        other = [o for o in jobs[0][1] if not o.startswith("loss=")] + ["loss=dft"]
        assert loader.load_sweep_config(master, other).loss.name == "dft" and calls == [other]
    GlobalHydra.instance().clear()
