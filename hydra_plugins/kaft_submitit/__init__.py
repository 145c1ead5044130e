"""hydra-submitit-launcher's launchers with one run dir per *job*, however many tasks it runs
(``hydra.launcher.tasks_per_node=N`` with ``train.distributed=ddp``: one srun task per rank).

Why: submitit runs the pickled launcher in every task of a job, and the launcher's ``__call__`` runs Hydra's
``run_job`` there, so each of the N tasks would write the job's ``.hydra/config.yaml``, ``hydra.yaml`` and
``overrides.yaml`` (truncate, then write: a reader such as ``kaft.sweep.status``, or the other task, can see an
empty file) and log into the same ``run.log``. Here a task of rank > 0 (``SLURM_PROCID``, from submitit's
``JobEnvironment``) runs the same job with two Hydra overrides: ``hydra.output_subdir=null`` (Hydra writes no
``.hydra/``) and its job log in ``run.rank<N>.log``. Both are ``hydra.*`` overrides, so the job's config, its
run dir (derived from the task overrides) and its identity are rank 0's. Results: only rank 0 writes results.json
(kaft/train/distributed.py). ``conf/hydra/launcher/slurm.yaml`` names :class:`SlurmLauncher`; it lives in the
``hydra_plugins`` package because Hydra instantiates launchers from there only.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _hsl


def rank_overrides(rank: int, file_log: bool = True) -> list[str]:
    """The Hydra overrides of a task of rank ``rank`` (none for rank 0: it is the job); ``file_log``: whether the
    job logging has Hydra's ``file`` handler to move (``hydra/job_logging=disabled`` has none)."""
    if rank == 0:
        return []
    log = f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/${{hydra.job.name}}.rank{rank}.log"
    return ["hydra.output_subdir=null", *([log] if file_log else [])]


class _OneRunDirPerJob:
    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any):
        import submitit  # lazy, as the launcher does
        from omegaconf import OmegaConf

        file_log = OmegaConf.select(self.config, "hydra.job_logging.handlers.file") is not None  # type: ignore[attr-defined]
        extra = rank_overrides(submitit.JobEnvironment().global_rank, file_log)
        return super().__call__([*sweep_overrides, *extra], *args, **kwargs)  # type: ignore[misc]


class SlurmLauncher(_OneRunDirPerJob, _hsl.SlurmLauncher):
    """``hydra/launcher=slurm``: submitit_slurm with one ``.hydra/`` and one ``run.log`` per job."""


class LocalLauncher(_OneRunDirPerJob, _hsl.LocalLauncher):
    """submitit_local's counterpart (not named by kaft's configs; ``hydra.launcher._target_`` can)."""
