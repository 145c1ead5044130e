"""``train.distributed: ddp``: one job as N ranks, under ``torchrun --nproc-per-node N -m kaft.run ...`` or as the N
tasks of one submitit job (``hydra/launcher=slurm hydra.launcher.tasks_per_node=N``: one srun task per rank, each
running the Hydra job function, the pattern hydra-submitit-launcher documents; not torchrun nested inside submitit).

Why this shape: the field's trainers are launched this way (TRL / LLaMA-Factory under torchrun / accelerate), and the
HF Trainer already runs DDP when torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) are set: each rank trains on its shard of every global batch (``batch_size × grad_accum × N``) and
the gradients are averaged. kaft adds what a whole *job* needs around that:

- :func:`setup` initialises torch.distributed from those variables — in a task of a submitit job, from the ones
  :func:`launcher_env` derives as submitit's ``TorchDistributedEnvironment`` does (``SLURM_PROCID``,
  ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first host of ``SLURM_JOB_NODELIST``, a port drawn from the job id) — (gloo on CPU, NCCL on GPU, each rank on its
  ``LOCAL_RANK`` GPU) before the job starts, so the train stage can agree across ranks;
- every rank runs the stages before and after training, but only rank 0 builds their artifacts: the other ranks see
  the cache through :class:`FollowerCache`, which waits for rank 0's artifact and never builds (lm-eval, for one,
  returns results on rank 0 only once torch.distributed is set up; and one writer per artifact is the contract). A
  rank that fails ends the job: torchrun stops the others;
- training is collective, so it cannot run under the cache's lock (the rank holding it would wait for the others
  forever): :func:`get_or_create_train` lets rank 0 decide whether the train artifact is cached and tell the others;
  if it is not, every rank trains, rank 0 into the cache and the others into a throwaway directory, then all meet at
  a barrier and read rank 0's artifact;
- only rank 0 writes results.json, error.txt and the logger's run (kaft/job.py, kaft/run.py); a rank 0 that fails
  leaves :data:`FAILED` in the run dir, so that the followers waiting for its artifacts stop with its error
  instead of waiting until the time limit (an srun task that ends does not end the others);
- under submitit, a rank > 0 writes no ``.hydra/`` and logs into ``run.rank<N>.log``
  (hydra_plugins/kaft_submitit/__init__.py), so the N tasks of a job leave one run dir as one job does.

Everything but :func:`active` imports torch lazily: a config check costs no torch import.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kaft.train.config import TrainError

log = logging.getLogger(__name__)

DISTRIBUTED = ("none", "ddp")
FAILED = ".kaft-rank0-failed"  # in the run dir: rank 0's error line, for the followers (see FollowerCache)


def world_size() -> int:
    """torchrun's ``WORLD_SIZE`` (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether this process is one rank of several with torch.distributed set up (:func:`setup`)."""
    if world_size() < 2:
        return False
    import torch.distributed as dist  # lazy: torch takes seconds to import

    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Whether this process writes the job's outputs: rank 0, or the only process."""
    return rank() == 0


def launcher_env() -> dict[str, str]:
    """In a task of a submitit job of several tasks, the ``env://`` variables of torch.distributed as submitit's
    ``TorchDistributedEnvironment`` derives them (rank = ``SLURM_PROCID``, world = ``SLURM_NTASKS``, local rank =
    ``SLURM_LOCALID``, master = the first host of ``SLURM_JOB_NODELIST``, port = ``MASTER_PORT`` or one drawn from
    the job id, the same in every task); ``{}`` outside submitit, with torchrun's variables already set (torchrun
    wins), or for a one-task job. ``SUBMITIT_FOLDER`` marks a task: submitit's ``process_job`` sets it in every task
    it runs, so a shell inside ``salloc -n 2`` (``SLURM_NTASKS`` set, one process) stays a one-process job.

    GPUs: a task that sees several (``CUDA_VISIBLE_DEVICES=0,1``, sbatch's ``--gpus-per-node`` without a per-task
    binding) is given its ``LOCAL_RANK``-th, so no two ranks share a GPU; a task SLURM already bound to one GPU
    keeps it."""
    if "SUBMITIT_FOLDER" not in os.environ or "WORLD_SIZE" in os.environ:
        return {}
    from submitit.helpers import TorchDistributedEnvironment  # lazy: only inside a submitit task

    env = TorchDistributedEnvironment()
    if env.world_size < 2:
        return {}
    out = {
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.local_world_size),
    }
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(visible) > 1:
        out["CUDA_VISIBLE_DEVICES"] = visible[env.local_rank % len(visible)]
    return out


def _launch_hint(n: int, submitit: bool) -> str:
    return f"hydra.launcher.tasks_per_node={n}" if submitit else f"WORLD_SIZE={n}"


def setup(train_cfg: Mapping, run_dir: str | os.PathLike | None = None) -> bool:
    """With ``train.distributed: ddp`` and several ranks (torchrun's variables, or a submitit job's tasks: they are
    exported from :func:`launcher_env` first), initialise the process group (gloo on CPU, NCCL on GPU) and return
    True; a job launched as several ranks without ``ddp`` (every rank would train on its own and write results) or
    ``ddp`` on one process raises :class:`TrainError`. One rank stays the one-process path: no process group.
    Rank 0 removes a :data:`FAILED` marker of an earlier run from ``run_dir`` before the ranks meet."""
    mode, env = train_cfg.get("distributed", "none"), launcher_env()
    n = int(env.get("WORLD_SIZE", world_size()))
    if mode == "none" and n > 1:
        raise TrainError(
            f"launched as {n} ranks ({_launch_hint(n, bool(env))}) but train.distributed=none; "
            "add train.distributed=ddp"
        )
    if mode == "none":
        return False
    if n < 2:
        raise TrainError(
            "train.distributed=ddp needs several ranks: launch with torchrun --nproc-per-node N -m kaft.run ..., "
            "or hydra/launcher=slurm hydra.launcher.tasks_per_node=N"
        )
    os.environ.update(env)
    import torch
    import torch.distributed as dist

    if run_dir is not None and is_main():
        (Path(run_dir) / FAILED).unlink(missing_ok=True)
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:  # torchrun: every GPU visible, LOCAL_RANK picks; submitit: one left (launcher_env), index 0
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        log.info("torch.distributed: rank %d of %d (%s)", rank(), n, dist.get_backend())
    return True


def check_launch(train_cfg: Mapping, launcher_cfg: Mapping | None) -> None:
    """Before a sweep is submitted (kaft/sweep/preflight.py): a submitit launcher's tasks per job
    (``nodes × tasks_per_node``) and ``train.distributed`` must agree, as :func:`setup` would find in the job —
    several tasks without ``ddp`` would train N copies and write N results, ``ddp`` in one task has no peer.
    A launcher without ``tasks_per_node`` (Hydra's basic one, under torchrun) is checked in the job."""
    if not launcher_cfg or launcher_cfg.get("tasks_per_node") is None:
        return
    per_node, nodes = int(launcher_cfg["tasks_per_node"]), int(launcher_cfg.get("nodes") or 1)
    mode, tasks = train_cfg.get("distributed", "none"), per_node * nodes
    if tasks > 1 and mode == "none":
        raise TrainError(
            f"hydra.launcher.tasks_per_node={per_node} (x {nodes} node(s)) runs {tasks} ranks per job but "
            "train.distributed=none; add train.distributed=ddp (or leave tasks_per_node at 1)"
        )
    if tasks < 2 and mode != "none":
        raise TrainError(
            f"train.distributed={mode} needs several ranks per job: set hydra.launcher.tasks_per_node=N "
            "(one task per GPU or CPU rank)"
        )


def failed(run_dir: str | os.PathLike, error: BaseException) -> BaseException:
    """A job failed with ``error``: on rank 0 of several, leave its line for the followers (:class:`FollowerCache`);
    returns ``error`` to raise."""
    if active() and is_main():
        (Path(run_dir) / FAILED).write_text((f"{type(error).__name__}: {error}".splitlines() or [""])[0] + "\n")
    return error


class FollowerCache:
    """A rank > 0's view of the job's cache: :meth:`get_or_create` waits until rank 0 has put the artifact there
    and reads it; everything else is the cache's own."""

    POLL_S = 0.2

    def __init__(self, cache, run_dir: str | os.PathLike | None = None):
        self._cache = cache
        self._failed = Path(run_dir) / FAILED if run_dir is not None else None

    def __getattr__(self, name: str):
        return getattr(self._cache, name)

    def get_or_create(self, stage: str, key: str, build: Callable[[Path], Any], meta: dict | None = None):
        while not self._cache.has(stage, key):
            if self._failed is not None and self._failed.exists():
                raise TrainError(
                    f"rank 0 failed, so its {stage} artifact will not come: "
                    + self._failed.read_text(errors="replace").strip()
                )
            time.sleep(self.POLL_S)
        return self._cache.get_or_create(stage, key, _never, meta=meta)


def job_cache(cache, run_dir: str | os.PathLike | None = None):
    """The cache a job's stages use on this rank: the cache itself, or on a rank > 0 its :class:`FollowerCache`
    (which stops when rank 0 leaves :data:`FAILED` in ``run_dir``)."""
    return FollowerCache(cache, run_dir) if active() and not is_main() else cache


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def get_or_create_train(cache, key: str, build: Callable[[Path], None], meta: Mapping):
    """The train stage's ``cache.get_or_create("train", key, build)`` across ranks (see the module docstring);
    ``(Hit, trained here)``. Not distributed: the cache's own."""
    if not active():
        return cache.get_or_create("train", key, build, meta=dict(meta))
    import torch.distributed as dist

    cached = _broadcast(cache.has("train", key) if is_main() else None)
    hit = None
    if not cached:
        if is_main():
            hit = cache.get_or_create("train", key, build, meta=dict(meta))
        else:
            with tempfile.TemporaryDirectory(prefix=f"kaft-rank{rank()}-") as tmp:
                build(Path(tmp))
    dist.barrier()  # rank 0's artifact is in the cache
    return hit or cache.get_or_create("train", key, _never, meta=dict(meta))


def _never(tmp: Path) -> None:
    raise TrainError("rank 0 did not leave its artifact in the cache (another cache_dir per rank?)")


def finish() -> None:
    """Tear the process group down at the end of the job (a clean exit for every rank)."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
