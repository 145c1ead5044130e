"""The KaFT paper's tables from a sweep's ``results.json`` files, with the paper's own numbers beside ours.

``python -m analysis.table SWEEP_DIR --table {2,3,4,5,6,7,9,10,11,12,13,14,losses,ren,auto} [--format md|latex|csv]
[--out FILE]`` collects every ``results.json`` under SWEEP_DIR (recursively), groups the jobs by (model, dataset),
names each job's row from its config (the paper's method / subset / ratio / loss / detector / partition / α-β), and
prints one table per (model, dataset): rows in the paper's order, columns = benchmarks + Avg. + Δ vs base + n
(accuracy in %). Several seeds (and, for Table 10, data seeds) of a row give mean ± std (sample std) over them.
Where the paper reports the same model on the same data, a "↳ paper" row follows each of ours with the published
numbers (``analysis/paper_numbers.yaml``). Failed jobs show as "failed".

Layouts: 2/3/6/7/14 = main comparison (base, wrong-only, vanilla, no-conflict, self-aligning, KaFT; the paper table
is picked by dataset: medqa → 2, medqa_xiezhi → 3, medqa_halueval → 6, xiezhi_* → 7, medqa_mmedbench → 14);
4/11 = detectors' wrong sets vs random; 5 = K subsets; 9 = one subset only; 10 = wrong ratio λ; 12 / losses = reward
strategies / every loss; 13 = α × β (the Fig. 4 heatmap matrix of Avg., then the long table); ren = Ren et al.'s HAR /
INC / SELF. ``auto`` (default) guesses the layout from what the sweep varies.

Python: :func:`collect_runs`, :func:`build_table`, :func:`render`, :func:`flat_rows`, :func:`log_table_to_wandb`
and :func:`log_sweep_tables` (for the sweep-end callback).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")
_SKIP_DIRS = {"wandb", ".hydra", ".submitit", "__pycache__"}

# method name -> (strategy, loss, subset): conf/method/*.yaml
METHODS = {"base": ("none", "constant", None), "vanilla": ("full", "constant", None),
           "no_conflict": ("no_conflict", "constant", None), "self_align": ("self_align", "constant", None),
           "kaft": ("full", "kaft", None), "wrong_only": ("wrong_only", "constant", None),
           "random_subset": ("subset", "constant", "random"), "self_align_majority": ("self_align", "constant", None)}
# (strategy, loss) -> method; self_align_majority is self_align with strategy.answer_source=majority (Run.method_id)
_METHOD_OF = {(s, lo): m for m, (s, lo, sub) in METHODS.items() if sub is None and m != "self_align_majority"}
PARTITIONS = {"k2": 2, "default": 4, "k8": 8}

MAIN_ORDER = ["base", "wrong_only", "vanilla", "no_conflict", "self_align", "self_align_majority", "kaft",
              "random_subset"]
MAIN_LABELS = {"base": "Base", "wrong_only": "Wrong-only", "vanilla": "Vanilla SFT", "no_conflict": "No-conflict",
               "self_align": "Self-aligning", "self_align_majority": "Self-aligning (majority of samples)",
               "kaft": "KaFT (Ours)", "random_subset": "Random subset"}
LOSS_LABELS = {"constant": "constant (vanilla SFT)", "kaft": "KaFT", "auto_adapt": "auto-adapt (R = Score)",
               "eaft": "EAFT", "dft": "DFT", "dpo": "DPO", "kaft_eaft": "KaFT × EAFT"}
# layout -> (title, row order, row labels, paper tables to match)
LAYOUTS: dict[str, dict[str, Any]] = {
    "main": {"title": "Main comparison (KaFT Tables 2/3/6/7/14)", "order": MAIN_ORDER, "labels": MAIN_LABELS,
             "paper": [2, 3, 6, 7, 14]},
    "4": {"title": "Wrong sets chosen by each conflict detector vs a random set (KaFT Tables 4/11)",
          "order": ["base", "random", "diversified", "no_diverse_query", "no_sampling", "no_both", "icl",
                    "mc_conversion"],
          "labels": {"base": "Base", "random": "Random", "diversified": "Ours (diversified)",
                     "no_diverse_query": "-w/o diverse query", "no_sampling": "-w/o response sampling",
                     "no_both": "-w/o both", "icl": "ICL (Ren et al.)", "mc_conversion": "MC conversion"},
          "paper": [11]},
    "5": {"title": "KaFT with K conflict subsets (KaFT Table 5)", "order": ["base", "k2", "k4", "k8"],
          "labels": {"base": "Base", "k2": "KaFT-2 subsets", "k4": "KaFT-4 subsets", "k8": "KaFT-8 subsets"},
          "paper": [5, 2]},
    "9": {"title": "One conflict subset only (KaFT Table 9, Fig. 2b)",
          "order": ["base", "random", "right", "might-right", "might-wrong", "wrong"],
          "labels": {"base": "Base", "random": "Random"}, "paper": [9, 2]},
    "10": {"title": "Ratio λ of the wrong subset (KaFT Table 10, Fig. 2c)", "order": ["base"],
           "labels": {"base": "Base"}, "paper": [10, 2]},
    "12": {"title": "Reward strategies (KaFT Table 12, Fig. 3)", "order": ["base", "kaft", "constant", "auto_adapt"],
           "labels": {"base": "Base", "kaft": "KaFT (Ours)", "constant": "-w. constant",
                      "auto_adapt": "-w. auto-adapt"}, "paper": [12, 2]},
    "losses": {"title": "Training objectives", "order": ["base", *LOSS_LABELS],
               "labels": {"base": "Base", **LOSS_LABELS}, "paper": [12, 2]},
    "13": {"title": "KaFT rewards α (wrong) × β (might-wrong) (KaFT Table 13, Fig. 4)", "order": ["base"],
           "labels": {"base": "Base"}, "paper": [13, 2]},
    "ren": {"title": "HAR / INC / SELF (Ren et al. 2024, Table 1)", "order": ["base", "har", "inc", "self"],
            "labels": {"base": "Base", "har": "HAR", "inc": "INC", "self": "SELF"}, "paper": ["ren1"]},
}
ALIASES = {"2": "main", "3": "main", "6": "main", "7": "main", "14": "main", "11": "4", "main": "main",
           **{k: k for k in ("4", "5", "9", "10", "12", "13", "losses", "ren")}}
TABLE_CHOICES = ["2", "3", "4", "5", "6", "7", "9", "10", "11", "12", "13", "14", "losses", "ren", "auto"]

BENCH_LABELS = {"medqa": "MedQA", "medmcqa": "MedMCQA", "mmlu_star": "MMLU*", "cmb": "CMB", "cmexam": "CMExam",
                "cmmlu_star": "CMMLU*", "xiezhi_history": "History", "xiezhi_engineering": "Engineering",
                "xiezhi_law": "Law", "halueval_qa": "QA", "halueval_dialogue": "Dialogue",
                "halueval_summarization": "Summarization", "mmedbench_zh": "Chinese", "mmedbench_en": "English",
                "mmedbench_fr": "French", "mmedbench_ja": "Japanese", "mmedbench_ru": "Russian",
                "mmedbench_es": "Spanish", "mmlu_id": "ID", "mmlu_ood": "OOD"}


# ----------------------------------------------------------------------------------------------- runs
from analysis.results import _dig  # noqa: E402  (one definition of the path lookup)


def _num(v, default=None):
    try:
        return default if v is None else float(v)
    except (TypeError, ValueError):
        return default


def _g(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


@dataclass
class Run:
    """One job: its settings (from ``config``, else its overrides) and accuracies in %."""

    path: Path
    status: str
    method: str | None
    strategy: str
    loss: str
    subset: str | None
    ratio: float | None
    data_seed: Any
    alpha: float                  # the KaFT rewards the loss used (loss.alpha / loss.beta)
    beta: float
    k: int
    detection: str
    seed: Any
    model: str
    dataset: str
    accs: dict = field(default_factory=dict)
    avg: float | None = None
    delta: float | None = None
    base_accs: dict = field(default_factory=dict)
    base_avg: float | None = None
    res: dict = field(default_factory=dict)
    eaft_alpha: float | None = None  # EAFT's entropy exponent (eaft, kaft_eaft)
    answer_source: str | None = None  # self_align's r_i: greedy (KaFT §2.2) or majority (older results: majority)

    @property
    def method_id(self) -> str:
        """The main-table row: the configured method, else derived from strategy + loss; self-aligning on the
        majority of the samples is a row of its own (``self_align_majority``)."""
        m = self._method_id()
        if m == "self_align" and self.answer_source == "majority":
            return "self_align_majority"
        return m

    def _method_id(self) -> str:
        if self.method:
            return self.method
        if self.strategy == "none":
            return "base"
        if self.strategy == "subset" and self.subset == "random" and self.loss == "constant":
            return "random_subset"
        m = _METHOD_OF.get((self.strategy, self.loss))
        if m:
            return m
        st = self.strategy + (f":{self.subset}" if self.strategy == "subset" and self.subset else "") + (
            f":{_g(self.ratio)}" if self.strategy == "wrong_ratio" else "")
        return f"{st}+{self.loss}"


def _overrides(res: dict) -> dict:
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
    return {(True, True): name, (False, True): "no_diverse_query", (True, False): "no_sampling",
            (False, False): "no_both"}[(dq, rs)]


def loss_params(cfg: dict, ov: dict, loss: str) -> tuple[float, float, float | None]:
    """(α, β, EAFT exponent) that a job's loss actually used: ``config.loss`` first (each loss resolves its own
    default there), then the top-level ``alpha`` / ``beta`` or overrides of older results. Before the exponent was
    named ``eaft_alpha``, ``loss=eaft`` read it from ``alpha``."""
    lc = cfg.get("loss") if isinstance(cfg.get("loss"), dict) else {}

    def first(*vals):
        return next((v for v in vals if v is not None), None)

    alpha = first(lc.get("alpha"), cfg.get("alpha"), ov.get("alpha"))
    beta = first(lc.get("beta"), cfg.get("beta"), ov.get("beta"))
    eaft = lc.get("eaft_alpha")
    if eaft is None and loss == "eaft":
        eaft = first(alpha, 1.0)
    elif eaft is None and loss == "kaft_eaft":
        eaft = 1.0
    return _num(alpha, 0.1), _num(beta, 0.5), _num(eaft)


def run_from_results(res: dict, path: Path | str = "") -> Run:
    cfg = res.get("config") or {}
    ov = _overrides(res)

    def pick(path_, key, default=None):
        v = _dig(cfg, path_)
        if v is None:
            v = ov.get(key)
        return default if v is None else v

    method = cfg.get("method")
    if isinstance(method, dict):
        method = method.get("name")
    if method is None and not cfg:
        method = ov.get("method")
    m_strategy, m_loss, m_subset = METHODS.get(method, (None, None, None))
    strategy = str(pick(("strategy", "name"), "strategy", m_strategy or "full"))
    loss = str(pick(("loss", "name"), "loss", m_loss or "kaft"))
    k = _dig(cfg, ("partition", "k"))
    if k is None:
        k = ov.get("partition.k") or PARTITIONS.get(ov.get("partition", "default"), 4)
    status = str(res.get("status") or "done")
    metrics = res.get("metrics") or {}
    base = res.get("base_metrics") or {}

    def accs(m):
        return {n: 100 * float(r["acc"]) for n, r in (m.get("benchmarks") or {}).items()
                if isinstance(r, dict) and _num(r.get("acc")) is not None}

    avg, base_avg = _num(metrics.get("average")), _num(base.get("average"))
    delta = _num(res.get("delta_vs_base"))
    if delta is None and avg is not None and base_avg is not None:
        delta = avg - base_avg
    alpha, beta, eaft_alpha = loss_params(cfg, ov, loss)
    source = pick(("strategy", "answer_source"), "strategy.answer_source",
                  "majority" if strategy == "self_align" else None)  # before the setting, self_align was majority
    return Run(path=Path(path), status=status, method=method,
               strategy=strategy, loss=loss, subset=pick(("strategy", "subset"), "strategy.subset", m_subset),
               ratio=_num(pick(("strategy", "ratio"), "strategy.ratio")),
               data_seed=pick(("strategy", "data_seed"), "strategy.data_seed"),
               alpha=alpha, beta=beta, eaft_alpha=eaft_alpha, answer_source=source, k=int(k),
               detection=detector_id(cfg.get("detection") or {}, ov.get("detection")),
               seed=pick(("seed",), "seed", 0), model=str(pick(("model", "name"), "model", "testbed")),
               dataset=str(pick(("dataset", "name"), "dataset", "testbed")),
               accs=accs(metrics), avg=None if avg is None else 100 * avg,
               delta=None if delta is None else 100 * delta, base_accs=accs(base),
               base_avg=None if base_avg is None else 100 * base_avg, res=res)


def _results_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        if "results.json" in files:
            found.append(Path(dirpath) / "results.json")
    return sorted(found)


def collect_runs(*roots: str | os.PathLike) -> list[Run]:
    """Every results.json under the roots (a run dir, a sweep dir, a folder of sweeps) as a :class:`Run`."""
    runs = []
    for root in roots:
        for p in _results_files(Path(root)):
            try:
                res = json.loads(p.read_text(encoding="utf-8"))
                if not isinstance(res, dict):
                    raise ValueError("not a JSON object")
                runs.append(run_from_results(res, p.parent))
            except (OSError, ValueError) as e:
                print(f"skipping {p}: {e}", file=sys.stderr)
    return runs


# ----------------------------------------------------------------------------------------------- row keys
def row_key(layout: str, r: Run) -> str:
    """The row of ``r`` in ``layout`` (an id shared with paper_numbers.yaml)."""
    m = r.method_id
    if m == "base":
        return "base"
    if layout == "4":
        if m == "random_subset":
            return "random"
        if r.strategy == "wrong_only" or (r.strategy == "subset" and r.subset == "wrong"):
            return r.detection if r.loss == "constant" else f"{r.detection}+{r.loss}"
        return m
    if layout == "5":
        return f"k{r.k}" if m == "kaft" else f"k{r.k}:{m}"
    if layout == "9":
        if r.strategy == "subset" and r.loss == "constant":
            return str(r.subset)
        return "wrong" if m == "wrong_only" else m
    if layout == "10":
        if r.strategy == "wrong_ratio" and r.loss == "constant" and r.ratio is not None:
            return _g(r.ratio)
        return {"no_conflict": "0", "vanilla": "1"}.get(m, m)
    if layout in ("12", "losses"):
        return r.loss if r.strategy == "full" else m
    if layout == "13":
        return f"a{_g(r.alpha)}_b{_g(r.beta)}" if m == "kaft" else m
    if layout == "ren":
        return r.strategy if r.strategy in ("har", "inc", "self") and r.loss == "constant" else m
    return m


def _loss_settings(r: Run) -> dict[str, float]:
    """The settings a run's loss used, by the name they carry in its config (α, β: KaFT's rewards; eaft_alpha:
    EAFT's entropy exponent)."""
    kaft = {"α": r.alpha, "β": r.beta}
    return {"kaft": kaft, "kaft_eaft": {**kaft, "eaft_alpha": r.eaft_alpha},
            "eaft": {"eaft_alpha": r.eaft_alpha}}.get(r.loss, {})


def split_by_settings(layout: str, key: str, runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs that share a row but not their loss's settings (a loss sweep over α, say) are rows of their own, named
    ``"<key> (α=…, β=…)"`` / ``"eaft (eaft_alpha=…)"``, not replicates of one row (the α × β rows of layout 13
    already carry them)."""
    if layout == "13" and key.startswith("a"):
        return {key: list(runs)}
    settings = [_loss_settings(r) for r in runs]
    names = list(dict.fromkeys(n for s in settings for n in s))
    varying = {n for n in names if len({s[n] for s in settings if n in s}) > 1}
    if not varying:
        return {key: list(runs)}
    out: dict[str, list[Run]] = {}
    for r, s in zip(runs, settings):
        parts = [f"{n}={_g(v)}" for n, v in s.items() if n in varying]
        out.setdefault(f"{key} ({', '.join(parts)})" if parts else key, []).append(r)
    return out


def _label(layout: str, key: str) -> str:
    if key.endswith(")") and " (" in key:  # a row split by its α / β (split_by_settings)
        head, rest = key.split(" (", 1)
        return f"{_label(layout, head)} ({rest}"
    spec = LAYOUTS[layout]
    if key in spec["labels"]:
        return spec["labels"][key]
    if layout == "10" and _num(key) is not None:
        return f"λ = {100 * float(key):g}%"
    if layout == "13" and key.startswith("a") and "_b" in key:
        a, b = key[1:].split("_b")
        return f"α={a}, β={b}"
    if layout == "5" and key[1:].isdigit():
        return f"KaFT-{key[1:]} subsets"
    return MAIN_LABELS.get(key, key)


def _order(layout: str, keys: Iterable[str]) -> list[str]:
    keys = list(dict.fromkeys(keys))
    order = LAYOUTS[layout]["order"]
    if layout == "10":
        return [k for k in order if k in keys] + sorted((k for k in keys if k not in order),
                                                       key=lambda k: (_num(k) is None, _num(k, 0.0), k))
    if layout == "13":
        def ab(k):
            try:
                a, b = k[1:].split("_b")
                return (0, float(a), float(b), k)
            except ValueError:
                return (1, 0.0, 0.0, k)
        return [k for k in order if k in keys] + sorted((k for k in keys if k not in order), key=ab)
    if layout == "5":
        return [k for k in order if k in keys] + sorted(
            (k for k in keys if k not in order), key=lambda k: (not k[1:].isdigit(), int(k[1:]) if k[1:].isdigit() else 0, k))
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def infer_layout(runs: Sequence[Run]) -> str:
    """Guess the paper table a sweep reproduces from what its jobs vary."""
    strategies = {r.strategy for r in runs}
    if "wrong_ratio" in strategies:
        return "10"
    if strategies & {"har", "inc", "self"}:
        return "ren"
    subsets = {r.subset for r in runs if r.strategy == "subset"}
    if len({r.detection for r in runs}) > 1 or ("wrong_only" in strategies and subsets <= {"random"} and subsets):
        return "4"
    if subsets:
        return "9"
    if len({r.k for r in runs}) > 1:
        return "5"
    full_losses = {r.loss for r in runs if r.strategy == "full"}
    if strategies <= {"full", "none"} and len(full_losses) > 1:
        return "12" if full_losses <= {"constant", "kaft", "auto_adapt"} else "losses"
    kaft = [r for r in runs if r.loss == "kaft" and r.strategy == "full"]
    if len({r.alpha for r in kaft}) > 1 or len({r.beta for r in kaft}) > 1:
        return "13"
    return "main"


# ----------------------------------------------------------------------------------------------- paper numbers
def load_paper(path: str | os.PathLike = PAPER_FILE) -> list[dict]:
    """paper_numbers.yaml as flat records: table, model, dataset, row, values {benchmark: %}, avg, delta,
    delta_vs_random, doubt (text or None), doubt_cols (set; "*" = all), delta_derived."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    recs: list[dict] = []
    for t in data.get("kaft") or []:
        cols, extra = list(t.get("columns") or []), list(t.get("extra") or [])
        cells = {}
        for c in t.get("doubt_cells") or []:
            cells.setdefault((c[0], c[1]), set()).add(c[2])
        for model, rows in (t.get("rows") or {}).items():
            for row, vals in rows.items():
                vals = list(vals)
                rec = {"table": t["table"], "caption": t.get("caption", ""), "model": model,
                       "dataset": t.get("dataset"), "row": str(row), "columns": cols,
                       "values": {c: v for c, v in zip(cols, vals) if v is not None},
                       "avg": None, "delta": None, "delta_vs_random": None, "delta_derived": False, "doubt": None,
                       "doubt_cols": set()}
                for name, v in zip(extra, vals[len(cols):]):
                    rec[name] = v
                if t.get("doubt"):
                    rec["doubt"] = " ".join(str(t["doubt"]).split())
                    rec["doubt_cols"] = cells.get((model, str(row)), set()) if t.get("doubt_cells") else {"*"}
                recs.append(rec)
    for t in data.get("ren") or []:
        cols = list(t.get("columns") or [])
        cells = {tuple(c[:3]): set() for c in t.get("doubt_cells") or []}
        for c in t.get("doubt_cells") or []:
            cells[tuple(c[:3])].add(c[3])
        for model, domains in (t.get("rows") or {}).items():
            for domain, rows in domains.items():
                names = [t["homo_benchmark"][domain] if c == "homo" else c for c in cols]
                for row, vals in rows.items():
                    dc = {t["homo_benchmark"][domain] if c == "homo" else c
                          for c in cells.get((model, domain, row), set())}
                    recs.append({"table": "ren1", "caption": t.get("caption", ""), "model": model,
                                 "dataset": t["domains"][domain], "row": str(row), "columns": names,
                                 "values": dict(zip(names, vals)), "avg": None, "delta": None,
                                 "delta_vs_random": None, "delta_derived": False,
                                 "doubt": " ".join(str(t.get("doubt", "")).split()) if dc else None,
                                 "doubt_cols": dc})
    # Δ vs base for tables that print none (9-13): the same model's Base row on the same benchmarks (Table 2)
    bases = {(r["model"], r["dataset"], tuple(r["columns"])): r for r in recs if r["row"] == "base"}
    for r in recs:
        if r["delta"] is None and r["avg"] is not None and r["row"] != "base":
            b = bases.get((r["model"], r["dataset"], tuple(r["columns"])))
            if b is not None and b["avg"] is not None:
                r["delta"], r["delta_derived"] = round(r["avg"] - b["avg"], 2), b["table"]
    return recs


def _table_ref(t) -> str:
    return "Ren et al. Tab. 1" if t == "ren1" else f"Tab. {t}"


def match_paper(paper: Sequence[dict], layout: str, model: str, dataset: str, row: str,
                benches: Sequence[str]) -> dict | None:
    """The paper record for a row: same table family, model, dataset and row id; the one sharing the most
    benchmarks with ours (the layout's own tables first)."""
    tables = LAYOUTS[layout]["paper"]
    cands = [r for r in paper if r["table"] in tables and r["model"] == model and r["dataset"] == dataset
             and r["row"] == row]
    if not cands:
        return None
    return max(cands, key=lambda r: (len(set(r["columns"]) & set(benches)), -tables.index(r["table"])))


# ----------------------------------------------------------------------------------------------- aggregation
@dataclass
class Cell:
    mean: float
    std: float | None = None   # sample std over replicates (None for one replicate)
    n: int = 1
    doubt: bool = False

    @classmethod
    def of(cls, values: Sequence[float]) -> "Cell | None":
        vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return None
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


@dataclass
class Row:
    id: str
    label: str
    source: str = "ours"            # ours | paper
    n: int = 0                      # replicates (seed × data seed) that finished
    n_failed: int = 0
    status: str = "done"            # done | failed | partial
    cells: dict = field(default_factory=dict)   # benchmark -> Cell
    avg: Cell | None = None
    delta: Cell | None = None
    delta_vs_random: Cell | None = None
    ref: str = ""                   # paper table reference
    note: str = ""
    alpha: float | None = None
    beta: float | None = None
    ratio: float | None = None


@dataclass
class Section:
    layout: str
    model: str
    dataset: str
    columns: list
    rows: list                      # ours and paper rows interleaved
    paper_refs: list = field(default_factory=list)
    footnotes: list = field(default_factory=list)

    @property
    def title(self) -> str:
        refs = f" — paper: {', '.join(self.paper_refs)}" if self.paper_refs else ""
        return f"{LAYOUTS[self.layout]['title']}: model {self.model}, dataset {self.dataset}{refs}"


def _replicates(runs: Sequence[Run], base: bool = False) -> list[dict]:
    """One dict (accs, avg, delta) per replicate (seed, data seed); jobs repeating a replicate (e.g. the random
    subset, the same for every detector) are averaged into one."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((str(r.seed), str(r.data_seed)), []).append(r)
    reps = []
    for rs in groups.values():
        accs: dict = {}
        for r in rs:
            for b, v in (r.base_accs if base else r.accs).items():
                accs.setdefault(b, []).append(v)
        avgs = [r.base_avg if base else r.avg for r in rs]
        deltas = [0.0 if base else r.delta for r in rs]
        reps.append({"accs": {b: statistics.fmean(v) for b, v in accs.items()},
                     "avg": _mean_or_none(avgs), "delta": None if base else _mean_or_none(deltas)})
    return reps


def _mean_or_none(vals):
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def _agg_row(layout: str, key: str, runs: Sequence[Run], base_from: Sequence[Run] = ()) -> Row:
    done = [r for r in runs if r.status == "done" and r.avg is not None]
    failed = [r for r in runs if r.status != "done" or r.avg is None]
    row = Row(id=key, label=_label(layout, key))
    reps = _replicates(done) if done else _replicates(base_from, base=True) if base_from else []
    if base_from and not done:
        row.note = "from base_metrics"
    row.n, row.n_failed = len(reps), len({(str(r.seed), str(r.data_seed)) for r in failed})
    row.status = "failed" if not reps and failed else "partial" if failed else "done"
    benches = list(dict.fromkeys(b for rep in reps for b in rep["accs"]))
    row.cells = {b: Cell.of([rep["accs"].get(b) for rep in reps]) for b in benches}
    row.avg = Cell.of([rep["avg"] for rep in reps])
    row.delta = None if key == "base" else Cell.of([rep["delta"] for rep in reps])
    any_run = (done or list(runs) or list(base_from) or [None])[0]
    if any_run is not None:
        if layout == "13" and key.startswith("a"):
            row.alpha, row.beta = any_run.alpha, any_run.beta
        if layout == "10":
            row.ratio = _num(key)
    return row


def _paper_row(rec: dict, benches: Sequence[str]) -> Row:
    doubt = rec["doubt_cols"]

    def cell(v, col):
        return None if v is None else Cell(float(v), doubt=("*" in doubt or col in doubt))

    row = Row(id=rec["row"], label=f"↳ paper ({_table_ref(rec['table'])})", source="paper",
              ref=_table_ref(rec["table"]))
    row.cells = {b: cell(rec["values"].get(b), b) for b in benches if rec["values"].get(b) is not None}
    row.avg = cell(rec["avg"], "avg")
    row.delta = cell(rec["delta"], "delta")
    row.delta_vs_random = cell(rec.get("delta_vs_random"), "delta_vs_random")
    if rec["delta_derived"]:
        row.note = f"Δ from {_table_ref(rec['delta_derived'])} Base"
    return row


def build_table(runs: Sequence[Run], table: str = "auto", paper: Sequence[dict] | None = None) -> list[Section]:
    """One :class:`Section` per (model, dataset) of the runs, in the layout of paper table ``table``."""
    layout = infer_layout(runs) if table == "auto" else ALIASES[str(table)]
    paper = load_paper() if paper is None else paper
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.model, r.dataset), []).append(r)
    sections = []
    for (model, dataset), rs in groups.items():
        by_row: dict = {}
        for r in rs:
            by_row.setdefault(row_key(layout, r), []).append(r)
        by_key = {k: v for key, runs_ in by_row.items() for k, v in split_by_settings(layout, key, runs_).items()}
        keys = _order(layout, by_key)
        ours = [_agg_row(layout, k, by_key[k]) for k in keys]
        if layout in ("main", "5") and "base" not in by_key:  # a Base row from the jobs' own base evaluation
            with_base = [r for r in rs if r.status == "done" and r.base_avg is not None]
            if with_base:
                ours.insert(0, _agg_row(layout, "base", [], base_from=with_base))
        benches = list(dict.fromkeys(b for row in ours for b in row.cells))
        matched = {row.id: match_paper(paper, layout, model, dataset, row.id, benches) for row in ours}
        first = next((m for m in matched.values() if m and m["columns"]), None)
        if first:  # the paper's column order, then ours that it lacks
            benches = [b for b in first["columns"] if b in benches] + [b for b in benches if b not in first["columns"]]
        if layout == "4":
            rnd = next((row for row in ours if row.id == "random" and row.avg), None)
            for row in ours:
                if rnd is not None and row.avg is not None and row is not rnd:
                    row.delta_vs_random = Cell(row.avg.mean - rnd.avg.mean, None, row.avg.n)
        rows, refs, notes = [], [], []
        for row in ours:
            rows.append(row)
            rec = matched.get(row.id)
            if rec:
                rows.append(_paper_row(rec, benches))
                refs.append(_table_ref(rec["table"]))
                if rec["doubt"]:
                    notes.append(f"† {_table_ref(rec['table'])}: {rec['doubt']}")
                if rec["delta_derived"]:
                    notes.append(f"Paper Δ of {_table_ref(rec['table'])} (which prints none) = its Avg. minus "
                                 f"the same model's Base Avg. in {_table_ref(rec['delta_derived'])}.")
        if any(r.note == "from base_metrics" for r in rows):
            notes.append("Base: the base-model evaluation stored in the fine-tuned jobs' results.json "
                         "(base_metrics); the sweep has no strategy=none job.")
        sections.append(Section(layout, model, dataset, benches, rows, list(dict.fromkeys(refs)),
                                list(dict.fromkeys(notes))))
    return sections


# ----------------------------------------------------------------------------------------------- rendering
def _fmt(c: Cell | None, signed: bool = False, status: str = "done") -> str:
    if status == "failed":
        return "failed"
    if c is None:
        return "-"
    s = f"{c.mean:+.2f}" if signed else f"{c.mean:.2f}"
    if c.std is not None:
        s += f" ± {c.std:.2f}"
    return s + ("†" if c.doubt else "")


def _n(row: Row) -> str:
    if row.source == "paper":
        return ""
    if row.status == "failed":
        return f"failed ({row.n_failed})"
    return f"{row.n}" + (f" (+{row.n_failed} failed)" if row.n_failed else "")


def _grid(sec: Section) -> tuple[list[str], list[list[str]]]:
    first = {"main": "Method", "4": "Detector (wrong set)", "5": "Method", "9": "Subset", "10": "Ratio",
             "12": "Reward", "losses": "Loss", "13": "Rewards", "ren": "Setting"}[sec.layout]
    header = [first, *(BENCH_LABELS.get(b, b) for b in sec.columns), "Avg.", "Δ vs base"]
    has_rnd = sec.layout == "4"
    if has_rnd:
        header.append("Δ vs Random")
    header.append("n")
    body = []
    for row in sec.rows:
        cells = [row.label + (" (base_metrics)" if row.note == "from base_metrics" else ""),
                 *(_fmt(row.cells.get(b), status=row.status) for b in sec.columns),
                 _fmt(row.avg, status=row.status), _fmt(row.delta, signed=True, status=row.status)]
        if has_rnd:
            cells.append(_fmt(row.delta_vs_random, signed=True, status=row.status))
        cells.append(_n(row))
        body.append(cells)
    return header, body


def _matrix(sec: Section) -> tuple[list[str], list[list[str]]] | None:
    """Table 13 as the Fig. 4 heatmap: rows α, columns β, cells Avg. (ours, then the paper's)."""
    ours = [r for r in sec.rows if r.source == "ours" and r.alpha is not None]
    if not ours:
        return None
    paper = {}
    for i, r in enumerate(sec.rows):
        if r.source == "paper" and i and sec.rows[i - 1].alpha is not None:
            paper[(sec.rows[i - 1].alpha, sec.rows[i - 1].beta)] = r
    alphas = sorted({r.alpha for r in ours})
    betas = sorted({r.beta for r in ours})
    cell = {(r.alpha, r.beta): r for r in ours}
    header = ["α \\ β", *(f"β = {b:g}" for b in betas)]
    body = []
    for a in alphas:
        line = [f"α = {a:g}"]
        for b in betas:
            r = cell.get((a, b))
            s = "" if r is None else _fmt(r.avg, status=r.status)
            p = paper.get((a, b))
            if p is not None and p.avg is not None:
                s += f" (paper {_fmt(p.avg)})"
            line.append(s or "-")
        body.append(line)
    return header, body


def _md(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    return "\n".join(out)


_TEX = [("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("$", "\\$"),
        ("±", "$\\pm$"), ("Δ", "$\\Delta$"), ("α", "$\\alpha$"), ("β", "$\\beta$"), ("λ", "$\\lambda$"),
        ("↳", "$\\hookrightarrow$"), ("†", "$^\\dagger$"), ("×", "$\\times$"), ("—", "---")]


def _tex(s: str) -> str:
    for a, b in _TEX:
        s = s.replace(a, b)
    return s


def _latex(header, body, caption: str) -> str:
    out = ["\\begin{table}[t]", "\\centering", "\\small",
           "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule",
           " & ".join(_tex(h) for h in header) + " \\\\", "\\midrule"]
    for line in body:
        out.append(" & ".join(_tex(c) for c in line) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{_tex(caption)}}}", "\\end{table}"]
    return "\n".join(out)


def flat_rows(sections: Sequence[Section]) -> list[dict]:
    """One flat dict per table row (ours and paper): what the CSV holds and W&B logs. Numbers in %."""
    out = []
    for sec in sections:
        for row in sec.rows:
            d: dict[str, Any] = {"table": sec.layout, "model": sec.model, "dataset": sec.dataset, "row": row.id,
                                 "label": row.label, "source": row.source, "paper_table": row.ref,
                                 "status": row.status, "n": row.n if row.source == "ours" else None,
                                 "n_failed": row.n_failed if row.source == "ours" else None}
            for b in sec.columns:
                c = row.cells.get(b)
                d[b] = None if c is None else round(c.mean, 4)
                d[f"{b}_std"] = None if c is None or c.std is None else round(c.std, 4)
            for name in ("avg", "delta", "delta_vs_random"):
                c = getattr(row, name)
                if name == "delta_vs_random" and sec.layout != "4":
                    continue
                d[name] = None if c is None else round(c.mean, 4)
                d[f"{name}_std"] = None if c is None or c.std is None else round(c.std, 4)
            d["doubtful"] = any(c is not None and c.doubt for c in [*row.cells.values(), row.avg, row.delta])
            if sec.layout == "13":
                d["alpha"], d["beta"] = row.alpha, row.beta
            out.append(d)
    return out


def render(sections: Sequence[Section], fmt: str = "md") -> str:
    """The table(s) as Markdown, LaTeX (booktabs) or CSV."""
    if fmt == "csv":
        rows = flat_rows(sections)
        cols = list(dict.fromkeys(c for r in rows for c in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return buf.getvalue()
    parts = []
    for sec in sections:
        grids = []
        if sec.layout == "13":
            m = _matrix(sec)
            if m:
                grids.append(("Avg. (%) over α × β (Fig. 4)", m))
        grids.append(("", _grid(sec)))
        for sub, (header, body) in grids:
            if fmt == "latex":
                parts.append(_latex(header, body, sec.title + (f" — {sub}" if sub else "")))
            else:
                parts.append(f"### {sec.title}" + (f" — {sub}" if sub else "") + "\n\n" + _md(header, body))
        if sec.footnotes:
            if fmt == "latex":
                parts.append("\n".join(f"% {n}" for n in sec.footnotes))
            else:
                parts.append("\n".join(f"- {n}" for n in sec.footnotes))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------- W&B
def _wandb_mode(mode: str | None = None) -> str:
    try:
        from kaft.track import resolve_mode
    except ImportError:  # pragma: no cover - analysis used without kaft installed
        return mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return resolve_mode(mode)


def log_table_to_wandb(rows: Sequence[dict] | Sequence[Section], name: str, run=None, init: dict | None = None):
    """Log ``rows`` (:func:`flat_rows` dicts, or :class:`Section` s) as a ``wandb.Table`` under the key ``name``.

    Logs to ``run``, else to the active ``wandb.run``, else to a new run ``wandb.init(**init)`` (job_type "table";
    mode offline unless ``init["mode"]`` / WANDB_MODE / WANDB_API_KEY say otherwise), which it finishes afterwards.
    Returns the ``wandb.Table``.
    """
    import wandb

    rows = list(rows)
    if rows and isinstance(rows[0], Section):
        rows = flat_rows(rows)
    cols = list(dict.fromkeys(c for r in rows for c in r)) or ["empty"]
    table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
    own = False
    if run is None:
        run = wandb.run
    if run is None:
        kw = {"job_type": "table", **(init or {})}
        kw["mode"] = _wandb_mode(kw.get("mode"))
        kw.setdefault("settings", wandb.Settings(console="off", quiet=True, silent=True, x_disable_stats=True,
                                                 disable_git=True, save_code=False))
        if kw.get("dir"):
            Path(kw["dir"]).mkdir(parents=True, exist_ok=True)
        run = wandb.init(**kw)
        own = True
    try:
        run.log({name: table})
        run.summary[f"{name}_rows"] = len(rows)
    finally:
        if own:
            run.finish()
    return table


def log_sweep_tables(sweep_dir: str | os.PathLike, table: str = "auto", logger_cfg: dict | None = None, run=None,
                     write_files: bool = True) -> list[Section]:
    """The sweep-end hook: build the paper table of ``sweep_dir`` (layout guessed from the jobs unless given), write
    ``paper_table.md`` / ``paper_table.csv`` into the sweep dir, and log it to W&B as ``table_<layout>`` in a run
    of its own (name ``table_<layout>``, job_type "table") in the sweep's group (the jobs' group: the sweep dir
    with "/" → "-", as kaft.run names it), with the project / entity / mode / tags of ``logger_cfg`` (the
    ``logger`` config; ``name: none`` skips W&B). Returns the sections (empty if the sweep has no results)."""
    runs = collect_runs(sweep_dir)
    if not runs:
        return []
    sections = build_table(runs, table)
    sweep = Path(sweep_dir)
    if write_files:
        from kaft.cache import atomic_write_text

        atomic_write_text(sweep / "paper_table.md", render(sections, "md"))
        atomic_write_text(sweep / "paper_table.csv", render(sections, "csv"))
    cfg = dict(logger_cfg or {})
    if cfg.get("name") == "none":
        return sections
    layout = sections[0].layout
    group = str(Path(sweep_dir)).replace(os.sep, "-").strip("-")  # = kaft.run._job_info()["group"]
    init = {"project": cfg.get("project") or "kaft", "entity": cfg.get("entity") or None, "group": group,
            "name": f"table_{layout}", "tags": list(cfg.get("tags") or []) or None, "mode": cfg.get("mode"),
            "dir": str(sweep.resolve())}
    log_table_to_wandb(flat_rows(sections), f"table_{layout}", run=run, init=init)
    return sections


# ----------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.table", description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="+", help="sweep dir(s), run dir(s) or folders of sweeps (searched recursively)")
    ap.add_argument("--table", default="auto", choices=TABLE_CHOICES,
                    help="the paper table whose layout to use (auto: guessed from what the sweep varies)")
    ap.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    ap.add_argument("--out", help="write here instead of stdout")
    ap.add_argument("--paper", default=str(PAPER_FILE), help="published numbers (YAML)")
    ap.add_argument("--no-paper", action="store_true", help="do not show the paper's numbers")
    args = ap.parse_args(argv)
    runs = collect_runs(*args.root)
    if not runs:
        print(f"no results.json under {' '.join(args.root)}", file=sys.stderr)
        return 1
    sections = build_table(runs, args.table, paper=[] if args.no_paper else load_paper(args.paper))
    text = render(sections, args.format)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
