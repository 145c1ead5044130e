"""``torchrun --nproc-per-node 2 -m kaft.run ... train.distributed=ddp`` on CPU (gloo) against one process at the same
global batch: one results.json (rank 0's), every cache artifact built once (by rank 0), the same metrics, and the
adapter within float32 summation error of the one-process adapter.

Why the tolerance holds: with the global batch the whole training set (12 items: 1 x 12 vs 2 ranks x 6), every
step's batch is the same set in both runs whatever the shuffling; the loss is a per-micro-batch mean and DDP
averages the two ranks' gradients, so the step is the same full-batch gradient, summed in another order. LoRA
dropout is off (its masks are random per rank). Measured: max |difference| 1.2e-7 on adapter weights of magnitude
0.13 after 4 Adam steps; the test allows 1e-5. Subprocess jobs (two torch imports per run on 2 cores): slow."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import tiny_job_args, write_tiny_job

pytestmark = pytest.mark.slow

SAME = ["train.epochs=4", "train.lora.dropout=0.0", "logger=none", "progress=false"]


def _env(cache):
    return {
        **os.environ,
        "KAFT_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }


def _run(cmd, root, cache):
    out = subprocess.run(cmd, cwd=root, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _adapter(cache, key):
    from safetensors.torch import load_file

    return load_file(str(cache / "train" / key / "adapter_model.safetensors"))


def test_two_ranks_give_one_results_json_and_the_one_process_model(tmp_path):
    root = write_tiny_job(tmp_path, test_format="csv")
    base = tiny_job_args(root, "test.csv")
    one, two = tmp_path / "cache1", tmp_path / "cache2"
    _run([sys.executable, "-m", "kaft.run", *base, *SAME, "train.batch_size=12", "hydra.run.dir=r1"], root, one)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "kaft.run"]  # = torchrun
    out = _run([*torchrun, *base, *SAME, "train.distributed=ddp", "train.batch_size=6", "hydra.run.dir=r2"], root, two)
    r1 = json.loads((root / "r1" / "results.json").read_text())
    r2 = json.loads((root / "r2" / "results.json").read_text())
    assert set(r2["cache"].values()) == {"miss"}  # rank 0's results: it built every artifact
    assert out.stdout.count("results: ") == 2 and r2["config"]["train"]["distributed"] == "ddp"
    assert all(len(list((two / stage).iterdir())) == 1 for stage in ("detect", "partition", "train"))
    assert r2["metrics"]["benchmarks"] == r1["metrics"]["benchmarks"]
    a, b = _adapter(one, r1["cache_keys"]["train"]), _adapter(two, r2["cache_keys"]["train"])
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    steps = [
        json.loads((c / "train" / r["cache_keys"]["train"] / "train_log.json").read_text())["global_step"]
        for c, r in ((one, r1), (two, r2))
    ]
    assert steps == [4, 4]  # one step per epoch in both: the global batch is the same
