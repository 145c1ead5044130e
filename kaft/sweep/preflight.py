"""The checks a run or a whole sweep gets before its first job starts (a Hydra callback, ``hydra.callbacks.preflight``
in ``conf/config.yaml``).

Hydra writes a job's ``.hydra/config.yaml`` into its run dir *before* the job function runs, so a job cannot protect
a finished run's directory from being rewritten: this callback does, in ``on_run_start`` (one run) and
``on_multirun_start`` (every job of a sweep, expanded as the basic sweeper will: ``hydra.sweeper.params`` and the
command line's ``a=1,2``; before the sweeper writes ``multirun.yaml``). For each job it

- checks the config (:func:`check_job_config`: the checks that need no data and no model), and
- compares the config part of the job's identity with the one recorded in its run dir's done results.json
  (:mod:`kaft.identity`; the data and model parts are compared by the job itself, which loads the data).

Every problem of every job is reported in one ``kaft: error:`` line (exit 2) before anything is written: no run
dir, no cache entry, no ``multirun.yaml``. Nothing here loads data or a model; composing a config is cheap.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from kaft import identity
from kaft.errors import KaftError
from kaft.results import load_results

log = logging.getLogger("kaft")

UNKNOWN_SIZE = sys.maxsize  # the data size the config-only checks assume: the data-size checks are the job's


# ----------------------------------------------------------------------------------------------- jobs and run dirs
def expand(loader: Any, master: DictConfig) -> list[tuple[int, list[str], DictConfig]]:
    """Every job of a multirun as Hydra's basic sweeper launches it: ``(num, overrides, config)``, the config with
    its ``hydra`` node (``hydra.job.num`` set, so the run dir resolves). [] for another sweeper (it cannot be
    expanded ahead)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(master.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(master.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + list(task))
    jobs, composed = [], {}
    for num, ov in enumerate(job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch):
        cfg = loader.load_sweep_config(master, list(ov))
        composed[tuple(ov)] = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.hydra.job.id, cfg.hydra.job.num = num, num
        jobs.append((num, list(ov), cfg))
    share_compositions(loader, master, composed)
    return jobs


def share_compositions(loader: Any, master: DictConfig, composed: dict[tuple[str, ...], DictConfig]) -> None:
    """Let Hydra's sweeper and launcher reuse the job configs composed here instead of composing each job twice
    more (``validate_batch_is_legal``, then ``launch``; about 0.25 s a composition on 2 cores, most of a finished
    sweep's re-run). The loader's ``load_sweep_config`` answers a (master, overrides) pair composed here with a copy
    of the very config it composed then, the same process and inputs, so the job sees what Hydra would compose;
    anything else is composed as before."""
    compose = getattr(loader.load_sweep_config, "_kaft_compose", loader.load_sweep_config)

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        hit = composed.get(tuple(sweep_overrides)) if master_config is master else None
        return copy.deepcopy(hit) if hit is not None else compose(master_config, sweep_overrides)

    load_sweep_config._kaft_compose = compose  # type: ignore[attr-defined]
    loader.load_sweep_config = load_sweep_config


@contextlib.contextmanager
def hydra_context(cfg: DictConfig) -> Iterator[None]:
    """``${hydra:...}`` interpolations (the run dir's) read ``cfg``'s hydra node; restored so nothing else sees it."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.instance()
    before = hc.cfg
    hc.set_config(cfg)
    try:
        yield
    finally:
        hc.cfg = before


def run_dir(cfg: DictConfig, multirun: bool) -> Path:
    with hydra_context(cfg):
        h = cfg.hydra
        return Path(str(h.sweep.dir)) / str(h.sweep.subdir) if multirun else Path(str(h.run.dir))


def task_config(cfg: DictConfig) -> DictConfig:
    """The config the job function receives: Hydra drops its own ``hydra`` node (whose run dir needs a live Hydra
    context to resolve), so stages that resolve the whole config (data and model sources) can."""
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    return task


# ----------------------------------------------------------------------------------------------- one job
def check_job_config(cfg: DictConfig) -> None:
    """Raise a :class:`~kaft.errors.KaftError` for a job config that cannot run — the checks that need no data and
    no model: every config group's schema (:func:`kaft.schema.check_config`; the data-size checks of
    :func:`kaft.stages.validate` are left to the job), a ``method=`` whose strategy or loss was overridden
    (:func:`kaft.schema.check_method`, from the job's composed choices) and the model config's own checks."""
    from kaft import modeling, schema
    from kaft.stages import plain

    schema.check_config(cfg)
    choices = OmegaConf.select(cfg, "hydra.runtime.choices")
    if choices is not None:
        schema.check_method({k: v for k, v in plain(choices).items() if not str(k).startswith("hydra/")})
    modeling.check_model_cfg(plain(cfg.model))


def job_problems(cfg: DictConfig, multirun: bool) -> tuple[str | None, str | None, Path | None]:
    """``(config problem, differences, run dir)`` of one job's full config (``hydra`` node included): what
    :func:`check_job_config` raises, and what differs from the done results in the job's run dir (None: nothing)."""
    from kaft.sweep.status import CONFIG_ERRORS, one_line

    try:
        with hydra_context(cfg):
            rdir = run_dir(cfg, multirun)
            task = task_config(cfg)
            check_job_config(task)
            if multirun:  # a submitit launcher's tasks per job against train.distributed (issue 23)
                from kaft.train.distributed import check_launch

                check_launch(task.train, OmegaConf.select(cfg, "hydra.launcher"))
            part = identity.config_part(task, cfg.hydra.runtime.choices.get("method"))
    except CONFIG_ERRORS as e:
        return one_line(e), None, None
    except KaftError as e:
        return str(e), None, None
    if task.get("force", False):
        return None, None, rdir
    res, _ = load_results(rdir)
    if res is None or res.get("status") != "done" or not res.get("metrics"):
        return None, None, rdir  # nothing finished there: the job runs (or resumes) in it
    diffs = identity.differences(res.get("identity"), {"parts": {"config": part}}, parts=("config",))
    return None, identity.summary(diffs) if diffs else None, rdir


def _label(overrides: list[str], common: set[str]) -> str:
    return " ".join(o for o in overrides if o not in common) or "(shared only)"


def sweep_problems(jobs: list[tuple[int, list[str], DictConfig]]) -> str | None:
    """One line for all bad jobs of a sweep (invalid configs first, then run dirs of another run), or None."""
    common = set.intersection(*(set(ov) for _, ov, _ in jobs)) if len(jobs) > 1 else set()
    bad, taken = [], []
    for num, ov, cfg in jobs:
        config, differs, _ = job_problems(cfg, multirun=True)
        if config:
            bad.append(f"job {num} ({_label(ov, common)}): {config}")
        elif differs:
            taken.append(f"job {num} ({_label(ov, common)}): {differs}")
    n = len(jobs)
    parts = [f"{len(bad)} of {n} jobs {'is' if len(bad) == 1 else 'are'} invalid: " + "; ".join(bad)] if bad else []
    if taken:
        where = Path(str(jobs[0][2].hydra.sweep.dir))
        parts.append(
            f"{len(taken)} of {n} jobs' run dirs under {where} hold the results of another run: "
            + "; ".join(taken)
            + f"; {identity.way_out(True)}"
        )
    return "; and ".join(parts) or None


def _fail(line: str) -> None:
    """End the command with one line: Hydra turns a callback's exceptions into warnings, so exit instead."""
    print(f"kaft: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class PreflightCallback(Callback):
    """Checks one run (``on_run_start``) or every job of a sweep (``on_multirun_start``) before anything is written;
    see the module doc."""

    def __init__(self, **_: Any):
        pass

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem, differs, rdir = job_problems(config, multirun=False)
        if problem or differs:
            _fail(problem or f"{rdir} holds the results of another run: {differs}; {identity.way_out(False)}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        jobs = expand(GlobalHydra.instance().config_loader(), config)
        line = sweep_problems(jobs) if jobs else None
        if line:
            _fail(line)


__all__ = [
    "PreflightCallback",
    "UNKNOWN_SIZE",
    "check_job_config",
    "expand",
    "hydra_context",
    "job_problems",
    "run_dir",
    "share_compositions",
    "sweep_problems",
    "task_config",
]
