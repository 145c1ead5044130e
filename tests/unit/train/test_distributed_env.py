"""A submitit job's tasks as torch.distributed ranks, without a cluster: fake SLURM variables in, torch.distributed's
``env://`` variables out (kaft/train/distributed.py ``launcher_env``, through submitit's own
``TorchDistributedEnvironment``); the launcher check before a sweep is submitted; a rank > 0's Hydra overrides
(hydra_plugins/kaft_submitit/__init__.py); a follower that stops when rank 0 failed; ``kaft.sweep.status`` reading a job's
two task results as one job."""

from __future__ import annotations

import os
import pickle
import random
import types

import pytest

from hydra_plugins.kaft_submitit import rank_overrides
from kaft.cache import Cache
from kaft.sweep import status as status_mod
from kaft.train import TrainError
from kaft.train import distributed as dist_mod

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def task_env(monkeypatch):
    """Task 3 of a 4-task job on 2 nodes (2 per node), as srun and submitit set it; nothing else of SLURM's."""
    for k in list(os.environ):
        if k.startswith(("SLURM_", "SUBMITIT_", "_TEST_CLUSTER_")) or k in TORCHRUN:
            monkeypatch.delenv(k)
    env = {
        "SUBMITIT_EXECUTOR": "slurm",  # exported by submitit's sbatch script
        "SUBMITIT_FOLDER": "/sweep/.submitit/4242",  # set by submitit's process_job in each task
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def test_slurm_task_variables_become_torch_distributed_ones(task_env):
    env = dist_mod.launcher_env()
    port = random.Random("4242").randint(20000, 60000)  # submitit's: drawn from the job id, the same in every task
    assert env == {
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(port),
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "CUDA_VISIBLE_DEVICES": "1",  # the task saw both GPUs of its node: it keeps its own
    }
    task_env.setenv("SLURM_PROCID", "0")
    task_env.setenv("SLURM_LOCALID", "0")
    task_env.setenv("SLURM_NODEID", "0")
    zero = dist_mod.launcher_env()
    assert (zero["RANK"], zero["MASTER_ADDR"], zero["MASTER_PORT"]) == ("0", "gpu07", str(port))
    task_env.setenv("CUDA_VISIBLE_DEVICES", "5")  # SLURM bound the task to one GPU already
    task_env.setenv("MASTER_PORT", "29600")
    assert "CUDA_VISIBLE_DEVICES" not in dist_mod.launcher_env() and dist_mod.launcher_env()["MASTER_PORT"] == "29600"


def test_no_submitit_task_or_torchrun_or_one_task_is_not_mapped(task_env):
    task_env.setenv("WORLD_SIZE", "2")  # torchrun's variables win
    assert dist_mod.launcher_env() == {}
    task_env.delenv("WORLD_SIZE")
    task_env.setenv("SLURM_NTASKS", "1")
    assert dist_mod.launcher_env() == {}
    task_env.setenv("SLURM_NTASKS", "4")
    task_env.delenv("SUBMITIT_FOLDER")  # a shell in `salloc -n 4`: one process
    assert dist_mod.launcher_env() == {}
    assert dist_mod.setup({"distributed": "none"}) is False and "RANK" not in os.environ


def test_setup_refuses_tasks_without_ddp(task_env):
    with pytest.raises(TrainError, match=r"4 ranks \(hydra.launcher.tasks_per_node=4\).*add train.distributed=ddp"):
        dist_mod.setup({"distributed": "none"})
    assert "RANK" not in os.environ  # nothing exported for a job that does not run
    task_env.setenv("SLURM_NTASKS", "1")
    with pytest.raises(TrainError, match="tasks_per_node=N"):
        dist_mod.setup({"distributed": "ddp"})


def test_launcher_and_train_distributed_must_agree_before_submitting():
    with pytest.raises(TrainError, match="tasks_per_node=2 .*add train.distributed=ddp"):
        dist_mod.check_launch({"distributed": "none"}, {"tasks_per_node": 2, "nodes": 1})
    with pytest.raises(TrainError, match="needs several ranks per job"):
        dist_mod.check_launch({"distributed": "ddp"}, {"tasks_per_node": 1, "nodes": 1})
    dist_mod.check_launch({"distributed": "ddp"}, {"tasks_per_node": 1, "nodes": 2})  # 2 nodes x 1 task
    dist_mod.check_launch({"distributed": "none"}, {"tasks_per_node": 1})
    dist_mod.check_launch({"distributed": "ddp"}, None)  # the basic launcher (torchrun): the job checks it
    dist_mod.check_launch({"distributed": "ddp"}, {"max_batch_size": 4})  # not a submitit launcher


def test_rank_above_0_writes_no_hydra_dir_and_logs_apart():
    assert rank_overrides(0) == []
    one = rank_overrides(1)
    assert one[0] == "hydra.output_subdir=null" and one[1].endswith("/${hydra.job.name}.rank1.log")
    assert rank_overrides(2, file_log=False) == ["hydra.output_subdir=null"]


def test_a_follower_stops_when_rank_0_failed(tmp_path):
    follower = dist_mod.FollowerCache(Cache(tmp_path / "cache"), tmp_path)
    (tmp_path / dist_mod.FAILED).write_text("ValueError: bad rows\n")
    with pytest.raises(TrainError, match="rank 0 failed, so its detect artifact will not come: ValueError: bad"):
        follower.get_or_create("detect", "k", lambda tmp: pytest.fail("a follower built"))


def test_status_reads_the_tasks_of_one_job_as_one(tmp_path):
    sub = tmp_path / ".submitit" / "77"
    sub.mkdir(parents=True)
    (sub / "77_submitted.pkl").write_bytes(pickle.dumps(types.SimpleNamespace(args=[["x=1"], "k", 0])))
    (sub / "77_0_result.pkl").write_bytes(pickle.dumps(("success", 0.5)))
    jobs = status_mod._submitit_jobs(tmp_path)
    assert list(jobs) == [0] and jobs[0]["finished"] and jobs[0]["error"] is None
    (sub / "77_1_result.pkl").write_bytes(pickle.dumps(("error", "Traceback ...\nRuntimeError: peer gone")))
    assert status_mod._submitit_jobs(tmp_path)[0]["error"] == "RuntimeError: peer gone"


def test_rank_0_leaves_its_error_line_only_when_distributed(tmp_path, monkeypatch):
    err = ValueError("bad rows\nsecond line")
    assert dist_mod.failed(tmp_path, err) is err and not (tmp_path / dist_mod.FAILED).exists()  # one process
    monkeypatch.setattr(dist_mod, "active", lambda: True)
    monkeypatch.setattr(dist_mod, "is_main", lambda: False)
    dist_mod.failed(tmp_path, err)
    assert not (tmp_path / dist_mod.FAILED).exists()  # a follower: rank 0 records the job
    monkeypatch.setattr(dist_mod, "is_main", lambda: True)
    dist_mod.failed(tmp_path, err)
    assert (tmp_path / dist_mod.FAILED).read_text() == "ValueError: bad rows\n"
