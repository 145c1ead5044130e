"""``train.distributed: ddp``: one job as N ranks under ``torchrun --nproc-per-node N -m kaft.run ...``.

Why this shape: the field's trainers are launched this way (TRL / LLaMA-Factory under torchrun / accelerate), and the
HF Trainer already runs DDP when torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) are set: each rank trains on its shard of every global batch (``batch_size × grad_accum × N``) and
the gradients are averaged. kaft adds what a whole *job* needs around that:

- :func:`setup` initialises torch.distributed from those variables (gloo on CPU, NCCL on GPU, each rank on its
  ``LOCAL_RANK`` GPU) before the job starts, so the train stage can agree across ranks;
- every rank runs the stages before and after training, but only rank 0 builds their artifacts: the other ranks see
  the cache through :class:`FollowerCache`, which waits for rank 0's artifact and never builds (lm-eval, for one,
  returns results on rank 0 only once torch.distributed is set up; and one writer per artifact is the contract). A
  rank that fails ends the job: torchrun stops the others;
- training is collective, so it cannot run under the cache's lock (the rank holding it would wait for the others
  forever): :func:`get_or_create_train` lets rank 0 decide whether the train artifact is cached and tell the others;
  if it is not, every rank trains, rank 0 into the cache and the others into a throwaway directory, then all meet at
  a barrier and read rank 0's artifact;
- only rank 0 writes results.json and the logger's run (kaft/job.py).

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


def setup(train_cfg: Mapping) -> bool:
    """With ``train.distributed: ddp`` and torchrun's variables (``WORLD_SIZE`` > 1), initialise the process group
    (gloo on CPU, NCCL on GPU) and return True; a job launched as several ranks without ``ddp`` (every rank would
    train on its own and write results) or ``ddp`` on one process raises :class:`TrainError`."""
    mode, n = train_cfg.get("distributed", "none"), world_size()
    if mode == "none" and n > 1:
        raise TrainError(
            f"launched as {n} ranks (WORLD_SIZE={n}) but train.distributed=none; add train.distributed=ddp"
        )
    if mode == "none":
        return False
    if n < 2:
        raise TrainError(
            "train.distributed=ddp needs several ranks: launch with torchrun --nproc-per-node N -m kaft.run ..."
        )
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        log.info("torch.distributed: rank %d of %d (%s)", rank(), n, dist.get_backend())
    return True


class FollowerCache:
    """A rank > 0's view of the job's cache: :meth:`get_or_create` waits until rank 0 has put the artifact there
    and reads it; everything else is the cache's own."""

    POLL_S = 0.2

    def __init__(self, cache):
        self._cache = cache

    def __getattr__(self, name: str):
        return getattr(self._cache, name)

    def get_or_create(self, stage: str, key: str, build: Callable[[Path], Any], meta: dict | None = None):
        while not self._cache.has(stage, key):
            time.sleep(self.POLL_S)
        return self._cache.get_or_create(stage, key, _never, meta=meta)


def job_cache(cache):
    """The cache a job's stages use on this rank: the cache itself, or on a rank > 0 its :class:`FollowerCache`."""
    return FollowerCache(cache) if active() and not is_main() else cache


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
