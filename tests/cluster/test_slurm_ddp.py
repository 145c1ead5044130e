"""One job as two srun tasks on the single-node SLURM cluster (``pytest -m slurm``): ``hydra/launcher=slurm
hydra.launcher.tasks_per_node=2 train.distributed=ddp``, CPU and gloo, torch.distributed set up from submitit's
environment (kaft/train/distributed.py ``launcher_env``), against one process at the same global batch.

The mirror of tests/cli/test_distributed.py (torchrun), with the same tolerance and the same reason for it: the
global batch is the whole training set (12 items: 1 process x 12 vs 2 ranks x 6), so every step sees the same items
in both runs; the loss is a per-micro-batch mean and DDP averages the ranks' gradients, so only the float32
summation order differs (LoRA dropout off: its masks are random per rank). The test allows 1e-5 on the adapter
weights (magnitude ~0.1) and wants the same metrics. Also: one results.json (rank 0's, every stage built by it),
one artifact per stage, one ``.hydra/`` (rank 1 writes none, hydra_plugins/kaft_submitit/__init__.py) and rank 1's log
apart, two task results in submitit's folder, and ``kaft.sweep.status`` counting the two tasks as one done job.
"""

from __future__ import annotations

import json

import pytest
from test_slurm import SLURM, _kaft, _status, setup, slurm_cluster  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slurm

SAME = ["train.epochs=4", "train.lora.dropout=0.0", "logger=none", "progress=false"]
TWO_TASKS = [*SLURM, "hydra.launcher.mem_gb=4", "hydra.launcher.tasks_per_node=2", "train.distributed=ddp"]


def _adapter(cache, key):
    from safetensors.torch import load_file

    return load_file(str(cache / "train" / key / "adapter_model.safetensors"))


def _only_results(sweep):
    found = list(sweep.rglob("results.json"))
    assert len(found) == 1, found
    return found[0], json.loads(found[0].read_text())


def test_two_tasks_per_node_give_one_results_json_and_the_one_process_model(slurm_cluster, setup):  # noqa: F811

    _kaft(setup, "cache_ddp1", *SAME, "train.batch_size=12", "hydra.sweep.dir=sweep_ddp1")
    out = _kaft(setup, "cache_ddp2", *SAME, *TWO_TASKS, "train.batch_size=6", "hydra.sweep.dir=sweep_ddp2")
    _, r1 = _only_results(setup / "sweep_ddp1")
    path, r2 = _only_results(setup / "sweep_ddp2")
    assert r2["status"] == "done" and r2["config"]["train"]["distributed"] == "ddp"
    assert set(r2["cache"].values()) == {"miss"}  # rank 0's results: it built every artifact
    assert r2["metrics"]["benchmarks"] == r1["metrics"]["benchmarks"]
    assert r2["base_metrics"] == r1["base_metrics"] and r2["detection"] == r1["detection"]
    one, two = setup / "cache_ddp1", setup / "cache_ddp2"
    assert all(len(list((two / stage).iterdir())) == 1 for stage in ("detect", "partition", "train"))
    a, b = _adapter(one, r1["cache_keys"]["train"]), _adapter(two, r2["cache_keys"]["train"])
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, diff
    steps = [
        json.loads((c / "train" / r["cache_keys"]["train"] / "train_log.json").read_text())["global_step"]
        for c, r in ((one, r1), (two, r2))
    ]
    assert steps == [4, 4]  # one step per epoch in both: the global batch is the same

    run = path.parent  # one run dir for the job: rank 0's .hydra/ and run.log, rank 1's log beside them
    assert (run / ".hydra" / "config.yaml").stat().st_size > 0
    assert (run / "run.rank1.log").exists() and "torch.distributed: rank 1 of 2" in (run / "run.rank1.log").read_text()
    assert "torch.distributed: rank 0 of 2 (gloo)" in (run / "run.log").read_text()
    assert "rank 1" not in (run / "run.log").read_text()
    sub = setup / "sweep_ddp2" / ".submitit"
    assert len(list(sub.glob("*/*_result.pkl"))) == 2  # one per task, the launcher returns rank 0's
    script = next(sub.glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "torch.distributed.run" not in script
    assert "(1 done)" in out.stdout
    assert "1 done of 1 jobs" in _status(setup / "sweep_ddp2")
    print(f"tasks_per_node=2 vs one process: max |adapter difference| {diff:.3g}")


def test_tasks_per_node_without_ddp_is_one_line_before_submitting(slurm_cluster, setup):  # noqa: F811
    out = _kaft(setup, "cache_ddp2", *SLURM, "hydra.launcher.tasks_per_node=2", "hydra.sweep.dir=sweep_bad", expect=2)
    assert "kaft: error:" in out.stderr and "add train.distributed=ddp" in out.stderr
    assert not (setup / "sweep_bad" / ".submitit").exists()  # nothing was submitted
