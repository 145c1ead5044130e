"""Stage 6 — tracking: ``results.json`` in the run directory, and an optional experiment logger.

Loggers are a registry (:data:`LOGGERS`: ``none``, ``wandb``) chosen by the logger config's ``name``. Every logger has
``log_results(results)`` and ``finish()``; ``finish()`` may be called more than once.

W&B (``conf/logger/wandb.yaml``)::

    name: wandb
    project: kaft        # default "kaft"
    entity: null
    mode: null           # null: $WANDB_MODE if set, else "online" with $WANDB_API_KEY, else "offline"
    tags: []
    settings: {}         # optional extra wandb.Settings fields

Each job gets its own W&B run whose files live under ``<run_dir>/wandb/``; jobs of one multirun share the
run ``group`` (the sweep's name), so the W&B UI can compare them. Several jobs in one process (Hydra's basic
launcher) are fine: ``reinit="finish_previous"`` closes a run a crashed job left open, and ``finish()`` ends
each job's run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

import kaft
from kaft.cache import atomic_write_json
from kaft.registry import Registry
from kaft.results import RESULTS_FILE

log = logging.getLogger(__name__)

#: logger name (the logger config's ``name``) -> class taking ``(logger_cfg, run_dir, run_name, group, config)``
LOGGERS: Registry[type] = Registry("logger")


# ----------------------------------------------------------------------------------------------- results.json
def write_results(run_dir: str | os.PathLike, results: dict) -> Path:
    """Write ``results`` to ``<run_dir>/results.json`` atomically (readers see the old file or the new one), with
    the values of secret environment variables masked (:func:`redact`)."""
    path = Path(run_dir) / RESULTS_FILE
    atomic_write_json(path, redact(results))
    return path


# ----------------------------------------------------------------------------------------------- secrets
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
SECRET_MIN_LEN = 8  # shorter values ("1", "false", as in TOKENIZERS_PARALLELISM=false) are not secrets
MASK = "***"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names contain KEY, TOKEN, SECRET, PASSWORD, PASSWD or CREDENTIAL
    (``WANDB_API_KEY``, ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ...), longest first."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if any(p in k.upper() for p in SECRET_NAME_PARTS) and len(v) >= SECRET_MIN_LEN}
    return sorted(vals, key=len, reverse=True)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """``obj`` (JSON-like) with every occurrence of a secret value (:func:`secret_values`) in a string — keys
    included — replaced by ``***``: a config that interpolates ``${oc.env:HF_TOKEN}`` does not leak the token into
    results.json or W&B."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj

    def scrub(x: Any) -> Any:
        if isinstance(x, str):
            for s in secrets:
                if s in x:
                    x = x.replace(s, MASK)
            return x
        if isinstance(x, Mapping):
            return {scrub(k): scrub(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [scrub(v) for v in x]
        return x

    return scrub(obj)


_DISTRIBUTIONS = {
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "lm_eval": "lm_eval",
    "hydra": "hydra-core",
    "wandb": "wandb",
    "datasets": "datasets",
    "kaft": "kaft-sft",
}


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a result (from installed metadata: nothing heavy is imported)."""
    out: dict[str, str | None] = {}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    if out["kaft"] is None:  # running from a source tree that is not pip-installed
        out["kaft"] = getattr(kaft, "__version__", None)
    out["python"] = platform.python_version()
    return out


# ----------------------------------------------------------------------------------------------- summaries
def _number(v: Any) -> float | int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return v
    if v in ("hit", "miss"):  # cache status as written by kaft.run
        return int(v == "hit")
    return None


def _flatten(prefix: str, obj: Any, out: dict) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif (n := _number(obj)) is not None:
        out[prefix] = n


def summary_metrics(results: Mapping) -> dict[str, float | int]:
    """The flat scalar metrics a tracker shows for one job.

    ``acc/<benchmark>``, ``acc_stderr/<benchmark>``, ``n/<benchmark>`` (a free-form benchmark also lm-eval's
    ``exact_match/<benchmark>`` and the verifier's ``no_verdict/<benchmark>``), ``average`` (tuned model), the same
    under ``base/`` for the base model, ``delta_vs_base``, ``time/<stage>`` (seconds), ``cache/<stage>`` (1 = hit)
    and ``failed`` (0/1).
    """
    out: dict[str, float | int] = {}
    for prefix, m in (("", results.get("metrics")), ("base/", results.get("base_metrics"))):
        if not isinstance(m, Mapping):
            continue
        for name, r in (m.get("benchmarks") or {}).items():
            for key in ("acc", "acc_stderr", "n", "exact_match", "no_verdict"):
                if (n := _number((r or {}).get(key))) is not None:
                    out[f"{prefix}{key}/{name}"] = n
        if (n := _number(m.get("average"))) is not None:
            out[f"{prefix}average"] = n
    if (n := _number(results.get("delta_vs_base"))) is not None:
        out["delta_vs_base"] = n
    _flatten("time", results.get("timings") or {}, out)
    _flatten("cache", results.get("cache") or {}, out)
    if "status" in results:
        out["failed"] = int(results["status"] != "done")
    return out


# ----------------------------------------------------------------------------------------------- loggers
@LOGGERS.register("none")
class NoneLogger:
    """Results go to results.json only."""

    def __init__(self, logger_cfg: Mapping, run_dir, run_name: str, group: str | None, config: dict):
        pass

    def log_results(self, results: dict) -> None:
        pass

    def finish(self, exit_code: int | None = None) -> None:
        pass


@LOGGERS.register("wandb")
class WandbLogger:
    """One W&B run per job, under ``<run_dir>/wandb``; offline unless an API key (or mode) says otherwise."""

    def __init__(self, logger_cfg: Mapping, run_dir, run_name: str, group: str | None, config: dict):
        import wandb  # lazy: optional and slow to import; needed only with logger=wandb

        cfg = dict(logger_cfg or {})
        self.mode = resolve_mode(cfg.get("mode"))
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "console": "off",
            "quiet": True,
            "silent": not cfg.get("verbose", False),
            "reinit": "finish_previous",
            "x_disable_stats": True,
            "disable_git": True,
            "save_code": False,
            **dict(cfg.get("settings") or {}),
        }
        # one W&B run per job directory: a requeued or re-run job resumes the same run id
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        if not id_file.exists():
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            id=run_id,
            resume="allow",
            project=cfg.get("project") or "kaft",
            entity=cfg.get("entity") or None,
            name=redact(run_name),
            group=redact(group),
            job_type=cfg.get("job_type") or "kaft",
            tags=list(cfg.get("tags") or []) or None,
            dir=str(run_dir),
            mode=self.mode,
            config=redact(_plain(config)),
            settings=wandb.Settings(**settings),
        )
        self._finished = False
        log.info("wandb run %s (%s) in %s", self.run.name, self.mode, getattr(self.run, "dir", run_dir))

    def log_results(self, results: dict) -> None:
        if self._finished:
            raise RuntimeError("log_results() after finish()")
        flat = summary_metrics(results)  # numbers only: nothing to redact
        if flat:
            self.run.log(flat)
            self.run.summary.update(flat)
        if results.get("status"):
            self.run.summary["status"] = results["status"]

    def finish(self, exit_code: int | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.run.finish(exit_code=exit_code)


def resolve_mode(mode: str | None) -> str:
    """The W&B mode: as configured, else ``$WANDB_MODE``, else online with ``$WANDB_API_KEY``, else offline."""
    mode = mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode == "dryrun":
        mode = "offline"
    if mode not in ("online", "offline", "disabled", "shared"):
        raise ValueError(f"logger.mode must be online, offline or disabled, got {mode!r}")
    return mode


def _plain(config: Any) -> Any:
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config) if isinstance(config, Mapping) else config


def make_logger(logger_cfg: Mapping | None, run_dir, run_name: str, group: str | None, config: dict):
    """The logger named by ``logger_cfg["name"]`` (``none`` when the config is empty)."""
    cfg = _plain(logger_cfg) or {}
    return LOGGERS.get(str(cfg.get("name") or "none"))(cfg, run_dir, run_name, group, config)


__all__ = [
    "LOGGERS",
    "NoneLogger",
    "WandbLogger",
    "make_logger",
    "package_versions",
    "redact",
    "resolve_mode",
    "secret_values",
    "summary_metrics",
    "write_results",
]
