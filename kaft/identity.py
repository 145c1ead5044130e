"""A job's identity: what produced its results.json, recorded there and compared before a re-run skips the job.

The re-run contract: ``python -m kaft.run`` skips a job whose run dir holds a done results.json only when the
identity recorded there equals the one the command would now produce. The identity has four parts:

``config``  the resolved job config with every key that reaches a stage (seed included) and the ``method`` label;
            only :data:`NOT_IN_IDENTITY` (and train's checkpoint cadence) are left out: they cannot change a number
``data``    the data fingerprints (``train`` and each benchmark: a local file edited by one answer changes them)
``model``   the model identity of :func:`kaft.modeling.resolve` (the testbed's is known without building it)
``code``    kaft's version and :data:`kaft.stages.STAGE_VERSIONS`

A different identity stops the job with one ``kaft: error:`` line naming what differs and the ways out
(``force=true``, another run / sweep dir); results.json without an identity (written by an earlier kaft) counts as
different. A results.json that is unreadable, failed or interrupted is re-run, with a log line saying why. The config
part is also checked up front by :mod:`kaft.sweep.preflight`, before Hydra rewrites the run dir's ``.hydra/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kaft.defaults import NEW_DEFAULTS, without_new_defaults
from kaft.errors import KaftError
from kaft.results import load_results

log = logging.getLogger("kaft")

#: top-level keys that cannot change a result: progress bars, the re-run switch, the experiment logger, where the
#: (content-addressed) cache lives, and the device (the stage cache keys leave it out too: an adapter trained on a
#: GPU is reused on the CPU). Everything else is part of the identity.
NOT_IN_IDENTITY = ("progress", "force", "logger", "cache_dir", "device")
PARTS = ("config", "data", "model", "code")

SHOWN = 4  # differences named in one error line


class RerunError(KaftError):
    """The run dir holds the results of another run (a different identity)."""


# ----------------------------------------------------------------------------------------------- the parts
def config_part(cfg: DictConfig | Mapping, method: str | None) -> dict:
    """The identity's config part: ``cfg`` resolved (a job config without Hydra's node, or results.json's ``config``)
    without :data:`NOT_IN_IDENTITY`, train's checkpoint keys and the :data:`NEW_DEFAULTS` keys at their default,
    plus the ``method`` label, as JSON would store it."""
    from kaft.track import redact
    from kaft.train.config import CHECKPOINT_KEYS

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c = {k: v for k, v in c.items() if k not in NOT_IN_IDENTITY and k != "hydra"}
    if isinstance(c.get("train"), Mapping):
        c["train"] = {k: v for k, v in c["train"].items() if k not in CHECKPOINT_KEYS}
    c = without_new_defaults(c)
    if isinstance(c.get("loss"), Mapping):  # a loss key added later is left out at its default (kaft.losses)
        from kaft.losses import key_config

        c["loss"] = key_config(c["loss"])
    c["method"] = method
    return json.loads(json.dumps(redact(c), default=str))  # results.json holds it redacted, as JSON


def code_part() -> dict:
    from kaft import __version__
    from kaft.stages import STAGE_VERSIONS

    return {"kaft": __version__, "stages": dict(STAGE_VERSIONS)}


def make(config: dict, fingerprints: Mapping | None, model: str | None) -> dict:
    """results.json's ``identity``: ``{"sha256": <of the parts>, "parts": {config, data, model, code}}``."""
    parts = {
        "config": config,
        "data": dict(fingerprints) if fingerprints is not None else None,
        "model": model,
        "code": code_part(),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return {"sha256": digest, "parts": parts}


def of_job(cfg: DictConfig, method: str | None) -> dict:
    """The identity the job ``cfg`` would record, from its data (loaded, not cached) and its model's identity
    (resolved without building or loading a model)."""
    from kaft import modeling
    from kaft import stages as S

    _, _, fps = S.stage_data(cfg, None)
    _, model_id = modeling.resolve(S.plain(cfg.model), cfg.cache_dir, S.plain(cfg), build=False)
    return make(config_part(cfg, method), fps, model_id)


def recorded_config(res: Mapping) -> dict | None:
    """The config part a results.json was made with: its identity's, else (an earlier kaft) one derived from its
    ``config``; None when neither is there."""
    part = ((res.get("identity") or {}).get("parts") or {}).get("config")
    if part is None and isinstance(res.get("config"), Mapping):
        cfg = dict(res["config"])
        part = config_part({k: v for k, v in cfg.items() if k != "method"}, cfg.get("method"))
    return part


def stale(res: Mapping, run_dir: str | Path) -> str | None:
    """What differs between a done results.json's config and the one Hydra last wrote into the run dir
    (``.hydra/config.yaml``: what the command that last ran there composed); None when they agree or either cannot
    be read. ``kaft.sweep.status`` shows such a job as ``stale``, not done."""
    import kaft.resolvers  # noqa: F401  (the resolvers the saved config interpolates)

    hydra_dir = Path(run_dir) / ".hydra"
    before = recorded_config(res)
    try:
        choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.get("choices") or {}
        now = config_part(OmegaConf.load(hydra_dir / "config.yaml"), choices.get("method"))
    except Exception:  # noqa: BLE001 - no Hydra files, or a config that resolves only inside its job
        return None
    diffs = config_differences(before, now) if before is not None else []
    return summary(diffs) if diffs else None


# ----------------------------------------------------------------------------------------------- differences
def _flat(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, Mapping) or (prefix and not d):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _show(v: Any) -> str:
    s = "(unset)" if v is _UNSET else v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."


_UNSET = object()


def config_differences(before: Mapping | None, now: Mapping) -> list[str]:
    """``key old -> new`` for every dotted key whose value differs (``(unset)`` for a key one side lacks); a group
    whose ``name`` changed is one entry (``loss kaft -> constant``), not one per setting of the two options."""
    a, b = _flat(before or {}), _flat(now)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, _UNSET) != b.get(k, _UNSET)]
    renamed = {k[: -len(".name")] for k in keys if k.endswith(".name")}
    out = []
    for k in keys:
        group = next((g for g in renamed if k.startswith(g + ".")), None)
        if group is None or k == group + ".name":
            out.append(f"{group or k} {_show(a.get(k, _UNSET))} -> {_show(b.get(k, _UNSET))}")
    return out


def differences(saved: Mapping | None, now: Mapping, parts: tuple[str, ...] = PARTS) -> list[str]:
    """What differs between a recorded identity and ``now``, in ``parts``; [] when they are equal."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("parts"), Mapping):
        return ["no identity recorded (an earlier kaft wrote it)"]
    a, b, out = saved["parts"], now["parts"], []
    if "config" in parts:
        out += config_differences(a.get("config"), b["config"])
    if "data" in parts and a.get("data") != b["data"]:
        old, new = a.get("data") or {}, b["data"] or {}
        out += [
            f"data fingerprint of {n} changed"
            if n in old and n in new
            else f"data set {n} {'added' if n in new else 'removed'}"
            for n in sorted(set(old) | set(new))
            if old.get(n) != new.get(n)
        ]
    if "model" in parts and a.get("model") != b["model"]:
        out.append(f"model identity {a.get('model')} -> {b['model']} (other weights, tokenizer or source)")
    if "code" in parts and a.get("code") != b["code"]:
        out.append(f"kaft version / stage versions {_show(a.get('code'))} -> {_show(b['code'])}")
    return out


def summary(diffs: list[str]) -> str:
    """The first :data:`SHOWN` differences, for one line."""
    more = f" and {len(diffs) - SHOWN} more" if len(diffs) > SHOWN else ""
    return ", ".join(diffs[:SHOWN]) + more


def way_out(multirun: bool) -> str:
    return (
        "force=true replaces those results, or give the sweep another hydra.sweep.dir"
        if multirun
        else "force=true replaces its results, or give this run another hydra.run.dir"
    )


# ----------------------------------------------------------------------------------------------- the job's check
def reusable(run_dir: str | Path, cfg: DictConfig, method: str | None, multirun: bool = False) -> dict | None:
    """The done results.json in ``run_dir`` when the job would now produce the same identity (skip the job); None
    to run it (no results, unreadable ones, a failed or interrupted run, ``force=true``: each logged). Raises
    :class:`RerunError` when the run dir holds the results of a different identity."""
    run_dir = Path(run_dir)
    res, problem = load_results(run_dir)
    if res is None:
        if problem:
            log.warning("re-running: the previous %s", problem)
        return None
    status = res.get("status")
    if status != "done" or not res.get("metrics"):
        why = (
            f"the previous run {status}"
            if status in ("failed", "interrupted")
            else f"results.json is not a finished run's (status {status!r})"
        )
        log.warning("re-running: %s%s", why, f" ({res['error']})" if res.get("error") else "")
        return None
    if cfg.get("force", False):
        log.warning("force=true: re-running; the results in %s will be replaced", run_dir)
        return None
    diffs = differences(res.get("identity"), of_job(cfg, method))
    if diffs:
        raise RerunError(f"{run_dir} holds the results of another run: {summary(diffs)}; {way_out(multirun)}")
    log.info(
        "already complete: %s (same config, data, model and code; force=true re-runs it)", run_dir / "results.json"
    )
    return res


__all__ = [
    "NEW_DEFAULTS",
    "NOT_IN_IDENTITY",
    "PARTS",
    "RerunError",
    "code_part",
    "config_differences",
    "config_part",
    "differences",
    "make",
    "of_job",
    "recorded_config",
    "reusable",
    "stale",
    "summary",
    "way_out",
    "without_new_defaults",
]
