"""A sweep's jobs as one DataFrame of what the paper's tables group by: the settings a job actually ran with and its
accuracies in %.

It starts from the results contract (:func:`kaft.results.sweep_frame`, one flat row per ``results.json``) and adds
what a table needs beyond the flat columns, read from the job's own results: the row a job belongs to in the
paper's vocabulary (``method_id``, derived from ``conf/method/*.yaml``, not a copy of it), the detector's ablation
name, the settings its loss used, the base model's per-benchmark accuracies, and — for failed jobs whose results
hold no config — the same settings from their Hydra overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from kaft.results import dig, read_results, sweep_frame
from kaft.schema import method_spec

CONF = Path(__file__).resolve().parents[1] / "conf"
ACC, BASE_ACC = "acc/", "base/"  # column prefixes: accuracy (%) per benchmark, fine-tuned and base model
# strategies whose rows are named by one of their settings besides the strategy's name (an unnamed row's id)
ID_SETTINGS = {"subset": "subset", "wrong_ratio": "ratio", "ren_ratio": "ratio"}
# the old-results defaults of settings a results.json may lack (before each setting existed)
LEGACY = {"strategy": "full", "loss": "kaft", "model": "testbed", "dataset": "testbed", "seed": 0}


@dataclass(frozen=True)
class Method:
    """One ``conf/method/<name>.yaml``: the strategy and loss it selects and the strategy settings it fixes."""

    name: str
    strategy: str
    loss: str
    settings: dict = field(default_factory=dict)

    def matches(self, job: dict) -> bool:
        return (job["strategy"], job["loss"]) == (self.strategy, self.loss) and all(
            job.get(k) == v for k, v in self.settings.items()
        )


@functools.cache
def methods() -> dict[str, Method]:
    """Every ``conf/method/*.yaml`` as a :class:`Method`, read with OmegaConf (``override /strategy: x`` lines of
    the defaults list and the ``strategy:`` block)."""
    out = {}
    for path in sorted((CONF / "method").glob("*.yaml")):
        groups, settings = method_spec(path)
        out[path.stem] = Method(path.stem, groups["strategy"], groups["loss"], settings)
    return out


@functools.cache
def partition_k(name: str) -> int:
    """K of ``conf/partition/<name>.yaml`` (4, the paper's, for a name without a file)."""
    path = CONF / "partition" / f"{name}.yaml"
    return int(OmegaConf.load(path).k) if path.exists() else 4


def method_id(job: dict) -> str:
    """The main table's row of a job: its configured method, else the method whose strategy, loss and strategy
    settings it ran with (the base model for an untrained job, whatever its loss), else ``strategy[:setting]+loss``.
    A configured method whose strategy settings were changed is the sibling method they match (``self_align`` run
    on the majority answer is ``self_align_majority``). A configured method whose strategy or loss is not what
    results.json says ran (``method=base strategy=full``, from before kaft refused it) is labelled by what ran: a
    trained model is never the "Base" row."""
    ms = methods()
    named = ms.get(job["method"]) if job["method"] else None
    if named is not None and (named.strategy, named.loss) != (job["strategy"], job["loss"]):
        named, job = None, {**job, "method": None}
    if named is not None and not named.matches(job):
        sibling = next(
            (m for m in ms.values() if m.matches(job) and (m.strategy, m.loss) == (named.strategy, named.loss)), None
        )
        return sibling.name if sibling else named.name
    if job["method"]:
        return job["method"]
    if job["strategy"] == ms["base"].strategy:
        return "base"
    found = sorted((m for m in ms.values() if m.matches(job)), key=lambda m: -len(m.settings))
    if found:
        return found[0].name
    st, value = job["strategy"], job.get(ID_SETTINGS.get(job["strategy"], ""))
    if value or value == 0:
        st += f":{_g(value) if isinstance(value, float) else value}"
    return f"{st}+{job['loss']}"


def _g(x) -> str:
    return "" if x is None else f"{x:g}"


def num(v, default=None):
    """``float(v)``; ``default`` for None and for anything that is not a number."""
    try:
        return default if v is None else float(v)
    except (TypeError, ValueError):
        return default


def overrides(res: dict) -> dict:
    """A job's Hydra overrides as ``{key: value}`` (``+`` / ``~`` prefixes dropped)."""
    out = {}
    for o in res.get("overrides") or []:
        k, eq, v = str(o).lstrip("+~").partition("=")
        if eq:
            out[k] = v
    return out


def detector_id(det: dict, override: str | None = None) -> str:
    """The detector a job used, as the paper's Table 4 rows name them: diversified probing with its ablation
    switches off is ``no_diverse_query`` / ``no_sampling`` / ``no_both`` whether it was chosen by file
    (``detection=no_both``) or by switch (``detection.diverse_query=false``)."""
    name = str(det.get("name") or override or "diversified")
    if name != "diversified":
        return name
    dq, rs = det.get("diverse_query", True) is not False, det.get("response_sampling", True) is not False
    return {
        (True, True): name,
        (False, True): "no_diverse_query",
        (True, False): "no_sampling",
        (False, False): "no_both",
    }[(dq, rs)]


def loss_params(flat: dict, cfg: dict, ov: dict, loss: str) -> tuple[float, float, float | None]:
    """(α, β, EAFT exponent) that a job's loss used: ``config.loss`` first (each loss resolves its own default
    there), then the top-level ``alpha`` / ``beta`` (both in the flat row), then overrides of older results. Before
    the exponent was named ``eaft_alpha``, ``loss=eaft`` read it from ``alpha``."""
    alpha = next((v for v in (flat.get("alpha"), ov.get("alpha")) if v is not None), None)
    beta = next((v for v in (flat.get("beta"), ov.get("beta")) if v is not None), None)
    eaft = dig(cfg, ("loss", "eaft_alpha")) if isinstance(cfg.get("loss"), dict) else None
    return num(alpha, 0.1), num(beta, 0.5), num(_unrecorded("eaft_alpha", eaft, loss, {"alpha": alpha, "beta": beta}))


def _unrecorded(setting: str, value, loss: str, given: dict):
    """A setting the loss reads but an older results.json does not hold: the key it was ``renamed`` from (the
    loss registry's declaration; ``loss=eaft`` read its exponent from ``alpha``) if given, else its default."""
    from kaft.losses import LOSSES  # torch: only for results that need it

    spec = LOSSES.get(loss) if value is None and loss in LOSSES else None
    if spec is None or setting not in spec.reads:
        return value
    old = next((given[k] for k, v in spec.renamed.items() if v == setting and given.get(k) is not None), None)
    return old if old is not None else {f.name: f.default for f in dataclasses.fields(spec.Settings)}[setting]


def _clean(v):
    """A pandas cell as plain Python: NaN → None, numpy scalars → int / float."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict)):
        v = v.item()
    return int(v) if isinstance(v, float) and v.is_integer() else v  # an int column that had a gap


def _accs(flat: dict, base: dict) -> dict:
    """Accuracy (%) per benchmark: ``acc/<b>`` of the flat row, ``base/<b>`` from the results' base_metrics."""
    out = {k: 100 * float(v) for k, v in flat.items() if k.startswith(ACC) and num(v) is not None}
    for b, r in (base.get("benchmarks") or {}).items():
        if isinstance(r, dict) and num(r.get("acc")) is not None:
            out[BASE_ACC + b] = 100 * float(r["acc"])
    return out


def job_record(flat: dict, res: dict) -> dict:
    """One job's table columns from its flat row (:func:`kaft.results.flatten`) and its results."""
    cfg = res.get("config") or {}
    ov = overrides(res)
    method = flat.get("method") or (ov.get("method") if not cfg else None)
    spec = methods().get(method)

    def pick(col, key, default=None):
        v = flat.get(col)
        v = ov.get(key) if v is None else v
        return default if v is None else v

    job = {
        "job_dir": flat["job_dir"],
        "status": str(flat.get("status") or "done"),
        "method": method,
        "strategy": str(pick("strategy", "strategy", spec.strategy if spec else LEGACY["strategy"])),
        "loss": str(pick("loss", "loss", spec.loss if spec else LEGACY["loss"])),
    }
    settings = spec.settings if spec else {}
    job["subset"] = pick("subset", "strategy.subset", settings.get("subset"))
    job["ratio"] = num(pick("ratio", "strategy.ratio"))
    job["data_seed"] = pick("data_seed", "strategy.data_seed")
    job["answer_source"] = (
        dig(cfg, ("strategy", "answer_source"))
        or ov.get("strategy.answer_source")
        or ("majority" if job["strategy"] == "self_align" else None)
    )  # older: majority
    context = dig(cfg, ("train", "context"))  # Ren et al.'s contextualized IFT (absent before it existed: off)
    job["context"] = str(ov.get("train.context", context)).lower() == "true"
    job["alpha"], job["beta"], job["eaft_alpha"] = loss_params(flat, cfg, ov, job["loss"])
    k = flat.get("partition")
    job["k"] = int(ov.get("partition.k") or partition_k(ov.get("partition", "default")) if k is None else k)
    job["detection"] = detector_id(cfg.get("detection") or {}, ov.get("detection"))
    job["seed"] = pick("seed", "seed", LEGACY["seed"])
    job["model"] = str(pick("model", "model", LEGACY["model"]))
    job["dataset"] = str(pick("dataset", "dataset", LEGACY["dataset"]))
    avg, base_avg, delta = num(flat.get("average")), num(flat.get("base_average")), num(flat.get("delta_vs_base"))
    if delta is None and avg is not None and base_avg is not None:
        delta = avg - base_avg
    job.update(
        avg=None if avg is None else 100 * avg,
        delta=None if delta is None else 100 * delta,
        base_avg=None if base_avg is None else 100 * base_avg,
    )
    job["method_id"] = method_id(job)
    job.update(_accs(flat, res.get("base_metrics") or {}))
    return job


def jobs_frame(*roots: str | os.PathLike) -> pd.DataFrame:
    """Every job under the roots (a run dir, a sweep dir, a folder of sweeps) as one row of table columns; the
    identity columns keep their Python values (object dtype), so ``str(seed)`` reads as in results.json."""
    records = []
    for root in roots:
        root = Path(root)
        flat = sweep_frame(root.parent if root.is_file() else root)
        for row in flat.to_dict("records"):
            row = {k: _clean(v) for k, v in row.items()}
            records.append(job_record(row, read_results(row["job_dir"])))
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=["job_dir", "status"])
    frame = frame.astype(object).where(frame.notna(), None)
    for col in frame.columns:
        if col.startswith((ACC, BASE_ACC)) or col in ("avg", "delta", "base_avg"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


def benchmarks(frame: pd.DataFrame, prefix: str = ACC) -> list[str]:
    """The benchmarks with a value in ``frame``, in column order."""
    return [c[len(prefix) :] for c in frame.columns if c.startswith(prefix) and frame[c].notna().any()]
