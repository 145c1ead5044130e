"""The paper's tables as data: each :class:`Layout` says which jobs make which row (rules over the job columns of
:func:`analysis.jobs.jobs_frame`), the rows' order and labels, and which of the paper's tables to print beside them.
:mod:`analysis.table` renders any of them the same way; a new table is a new ``LAYOUTS.register`` call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from analysis.jobs import num
from kaft.errors import ConfigError
from kaft.registry import Registry

# the main comparison's rows (KaFT Tables 2/3/6/7/14), in the paper's order; also every layout's fallback labels
METHOD_ORDER = (
    "base",
    "wrong_only",
    "vanilla",
    "no_conflict",
    "self_align",
    "self_align_majority",
    "kaft",
    "random_subset",
)
METHOD_LABELS = {
    "base": "Base",
    "wrong_only": "Wrong-only",
    "vanilla": "Vanilla SFT",
    "no_conflict": "No-conflict",
    "self_align": "Self-aligning",
    "self_align_majority": "Self-aligning (majority of samples)",
    "kaft": "KaFT (Ours)",
    "random_subset": "Random subset",
}
# SMA's Tables 5 / 6 (conf/method/sma_*.yaml; vanilla is Table 5's "SFT / dataset"), in the paper's order
SMA_ORDER = (
    "base",
    "sma_sft_self",
    "sma_sft_self_all",
    "vanilla",
    "sma_dpo",
    "sma_dpo_dataset_self",
    "sma_dpo_dataset_dataset",
    "sma_sft_plus_dpo",
)
SMA_LABELS = {
    "sma_sft_self": "SFT / self (single label)",
    "sma_sft_self_all": "SFT / self (all labels)",
    "vanilla": "SFT / dataset",
    "sma_dpo": "DPO / self / self",
    "sma_dpo_dataset_self": "DPO / dataset / self",
    "sma_dpo_dataset_dataset": "DPO / dataset / dataset",
    "sma_sft_plus_dpo": "SFT + DPO",
}
SETTING_NAMES = {"alpha": "α", "beta": "β", "eaft_alpha": "eaft_alpha"}  # loss settings a row can be split by
ANY = object()  # a Rule condition: the column has a value


@dataclass(frozen=True)
class Rule:
    """Jobs whose columns match ``when`` (a value; a tuple: any of them; :data:`ANY`: not None) make row ``row``,
    a format string over the job's columns (``"k{k}"``)."""

    when: dict
    row: str

    def mask(self, jobs: pd.DataFrame) -> pd.Series:
        m = pd.Series(True, index=jobs.index)
        for col, want in self.when.items():
            v = jobs[col]
            m &= v.notna() if want is ANY else v.isin(want) if isinstance(want, tuple) else v.eq(want)
        return m


def _by_name(key: str):
    return key


def _by_number(key: str):
    return (num(key) is None, num(key, 0.0), key)


def _alpha_beta(key: str) -> tuple[float, float] | None:
    m = re.fullmatch(r"a(.+)_b(.+)", key)
    return (float(m[1]), float(m[2])) if m and num(m[1]) is not None and num(m[2]) is not None else None


def _by_alpha_beta(key: str):
    ab = _alpha_beta(key)
    return (0, *ab, key) if ab else (1, 0.0, 0.0, key)


def _by_k(key: str):
    return (not key[1:].isdigit(), int(key[1:]) if key[1:].isdigit() else 0, key)


def _loss(name: str):
    from kaft.losses import LOSSES  # torch: only when a table asks about a loss

    try:
        return LOSSES.get(name)
    except ConfigError:
        return None


def loss_label(key: str) -> str | None:
    """The loss registry's label of a loss row (``None`` for a key that names no loss)."""
    loss = _loss(key)
    return loss.label if loss else None


def loss_settings(loss: str) -> tuple[str, ...]:
    """The settings (:data:`SETTING_NAMES`) that ``loss`` reads, from the loss registry."""
    spec = _loss(loss)
    return tuple(s for s in SETTING_NAMES if spec is not None and s in spec.reads)


@dataclass(frozen=True)
class Layout:
    """One paper table: rows from ``rules`` (first match; else ``default``; the base model is always ``base``),
    in ``order`` then sorted by ``sort``; labels from ``labels``, else ``label_of(key)``, else the method labels."""

    name: str
    title: str
    first: str  # the row column's header
    order: tuple
    paper: tuple  # the paper's tables to show beside ours (this layout's own first)
    aliases: tuple = ()  # the paper table numbers that select this layout (--table)
    labels: dict = field(default_factory=dict)
    rules: tuple = ()
    default: str = "{method_id}"
    label_of: Callable[[str], str | None] = lambda key: None
    sort: Callable = _by_name
    base_from_metrics: bool = False  # no base job: a Base row from the jobs' own base evaluation
    versus_random: bool = False  # a "Δ vs Random" column (Table 4)
    matrix: bool = False  # the α × β grid of Avg. before the long table (Table 13, Fig. 4)
    name_settings: bool = False  # every row names the settings its loss used ("EAFT (eaft_alpha=1)")

    def row_keys(self, jobs: pd.DataFrame) -> pd.Series:
        """Each job's row id (shared with paper_numbers.yaml)."""
        keys = pd.Series(None, index=jobs.index, dtype=object)
        for rule in (Rule({"method_id": "base"}, "base"), *self.rules, Rule({}, self.default)):
            m = rule.mask(jobs) & keys.isna()
            keys[m] = [_fmt_row(rule.row, job) for job in jobs[m].to_dict("records")]
        return keys

    def label(self, key: str) -> str:
        if key.endswith(")") and " (" in key:  # a row split by its loss settings (split_by_settings)
            head, rest = key.split(" (", 1)
            return f"{self.label(head)} ({rest}"
        return self.labels.get(key) or self.label_of(key) or METHOD_LABELS.get(key, key)

    def ordered(self, keys) -> list[str]:
        keys = list(dict.fromkeys(keys))
        if self.name_settings:  # a row named with its settings sits where its loss does
            first = [k for head in self.order for k in keys if k.split(" (", 1)[0] == head]
            return first + sorted((k for k in keys if k not in first), key=self.sort)
        return [k for k in self.order if k in keys] + sorted((k for k in keys if k not in self.order), key=self.sort)

    def split_by_settings(self, key: str, jobs: pd.DataFrame) -> pd.Series:
        """Jobs that share a row but not their loss's settings (a loss swept over α, say) are rows of their own,
        ``"<key> (α=…, β=…)"``, not replicates of one row (the α × β rows of the matrix already carry them)."""
        keys = pd.Series(key, index=jobs.index, dtype=object)
        if self.matrix and _alpha_beta(key):
            return keys
        settings = [{s: job[s] for s in loss_settings(job["loss"])} for job in jobs.to_dict("records")]
        names = list(dict.fromkeys(n for s in settings for n in s))
        varying = [n for n in names if self.name_settings or len({s[n] for s in settings if n in s}) > 1]
        for i, s in zip(jobs.index, settings):
            parts = [f"{SETTING_NAMES[n]}={_g(v)}" for n, v in s.items() if n in varying]
            if parts:
                keys[i] = f"{key} ({', '.join(parts)})"
        return keys


def _g(x) -> str:
    return "" if x is None else f"{x:g}"


def _fmt_row(template: str, job: dict) -> str:
    return template.format(**{k: ("None" if v is None else v) for k, v in job.items() if "/" not in k})


def _lambda_label(key: str) -> str | None:
    return f"λ = {100 * float(key):g}%" if num(key) is not None else None


def _ratio_label(key: str) -> str | None:
    return f"r = {float(key):g}" if num(key) is not None else None


def _alpha_beta_label(key: str) -> str | None:
    m = re.fullmatch(r"a(.+)_b(.+)", key)
    return f"α={m[1]}, β={m[2]}" if m else None


def _k_label(key: str) -> str | None:
    return f"KaFT-{key[1:]} subsets" if key[1:].isdigit() else None


LAYOUTS: Registry[Layout] = Registry("table layout")
_WRONG_SET = (
    Rule({"method_id": "random_subset"}, "random"),
    Rule({"strategy": "wrong_only", "loss": "constant"}, "{detection}"),
    Rule({"strategy": "wrong_only"}, "{detection}+{loss}"),
    Rule({"strategy": "subset", "subset": "wrong", "loss": "constant"}, "{detection}"),
    Rule({"strategy": "subset", "subset": "wrong"}, "{detection}+{loss}"),
)
for _layout in (
    Layout(
        "main",
        "Main comparison (KaFT Tables 2/3/6/7/14)",
        "Method",
        METHOD_ORDER,
        (2, 3, 6, 7, 14),
        ("2", "3", "6", "7", "14", "main"),
        base_from_metrics=True,
    ),
    Layout(
        "4",
        "Wrong sets chosen by each conflict detector vs a random set (KaFT Tables 4/11)",
        "Detector (wrong set)",
        ("base", "random", "diversified", "no_diverse_query", "no_sampling", "no_both", "icl", "mc_conversion"),
        (11,),
        ("4", "11"),
        {
            "base": "Base",
            "random": "Random",
            "diversified": "Ours (diversified)",
            "no_diverse_query": "-w/o diverse query",
            "no_sampling": "-w/o response sampling",
            "no_both": "-w/o both",
            "icl": "ICL (Ren et al.)",
            "mc_conversion": "MC conversion",
        },
        _WRONG_SET,
        versus_random=True,
    ),
    Layout(
        "5",
        "KaFT with K conflict subsets (KaFT Table 5)",
        "Method",
        ("base", "k2", "k4", "k8"),
        (5, 2),
        ("5",),
        {"base": "Base", "k2": "KaFT-2 subsets", "k4": "KaFT-4 subsets", "k8": "KaFT-8 subsets"},
        (Rule({"method_id": "kaft"}, "k{k}"),),
        "k{k}:{method_id}",
        _k_label,
        _by_k,
        base_from_metrics=True,
    ),
    Layout(
        "9",
        "One conflict subset only (KaFT Table 9, Fig. 2b)",
        "Subset",
        ("base", "random", "right", "might-right", "might-wrong", "wrong"),
        (9, 2),
        ("9",),
        {"base": "Base", "random": "Random"},
        (Rule({"strategy": "subset", "loss": "constant"}, "{subset}"), Rule({"method_id": "wrong_only"}, "wrong")),
    ),
    Layout(
        "10",
        "Ratio λ of the wrong subset (KaFT Table 10, Fig. 2c)",
        "Ratio",
        ("base",),
        (10, 2),
        ("10",),
        {"base": "Base"},
        (
            Rule({"strategy": "wrong_ratio", "loss": "constant", "ratio": ANY}, "{ratio:g}"),
            Rule({"method_id": "no_conflict"}, "0"),
            Rule({"method_id": "vanilla"}, "1"),
        ),
        label_of=_lambda_label,
        sort=_by_number,
    ),
    Layout(
        "12",
        "Reward strategies (KaFT Table 12, Fig. 3)",
        "Reward",
        ("base", "kaft", "constant", "auto_adapt"),
        (12, 2),
        ("12",),
        {"base": "Base", "kaft": "KaFT (Ours)", "constant": "-w. constant", "auto_adapt": "-w. auto-adapt"},
        (Rule({"strategy": "full"}, "{loss}"),),
    ),
    Layout(
        "losses",
        "Training objectives",
        "Loss",  # the losses in the order the report has always shown them
        ("base", "constant", "kaft", "auto_adapt", "eaft", "dft", "dpo", "kaft_eaft"),
        (12, 2),
        ("losses",),
        {"base": "Base"},
        (Rule({"strategy": "full"}, "{loss}"),),
        label_of=loss_label,
        name_settings=True,
    ),
    Layout(
        "sma",
        "Data sources and losses (SMA Tables 5 / 6)",
        "Loss / chosen / rejected",
        SMA_ORDER,
        ("sma5", "sma6"),
        ("sma", "sma5", "sma6"),
        SMA_LABELS,
        base_from_metrics=True,
    ),
    Layout(
        "responses",
        "Responses: the free-form testbed, MC conversion for detection only (issue 21)",
        "Method",
        ("base", "vanilla", "eaft", "kaft", "no_conflict", "sma_dpo_dataset_self"),
        (),
        ("responses",),
        {"base": "Base", "vanilla": "Vanilla SFT", "eaft": "EAFT", "sma_dpo_dataset_self": "DPO / dataset / self"},
        base_from_metrics=True,
    ),
    Layout(
        "13",
        "KaFT rewards α (wrong) × β (might-wrong) (KaFT Table 13, Fig. 4)",
        "Rewards",
        ("base",),
        (13, 2),
        ("13",),
        {"base": "Base"},
        (Rule({"method_id": "kaft"}, "a{alpha:g}_b{beta:g}"),),
        label_of=_alpha_beta_label,
        sort=_by_alpha_beta,
        matrix=True,
    ),
    Layout(
        "ren",
        "HAR / INC / SELF (Ren et al. 2024, Table 1)",
        "Setting",
        ("base", "har", "inc", "self"),
        ("ren1",),
        ("ren",),
        {"base": "Base", "har": "HAR", "inc": "INC", "self": "SELF"},
        (Rule({"strategy": ("har", "inc", "self"), "loss": "constant"}, "{strategy}"),),
    ),
    Layout(
        "ren2",
        "Vanilla vs contextualized IFT on INC (Ren et al. 2024, Exp-II, Table 2)",
        "IFT",
        ("base", "vanilla", "contextualized"),
        (),  # Ren et al.'s Table 2 averages domains per model: no per-dataset number to show beside (docs quote it)
        ("ren2",),
        {"base": "Base", "vanilla": "Vanilla (INC)", "contextualized": "Contextualized (INC)"},
        (
            Rule({"strategy": "inc", "loss": "constant", "context": True}, "contextualized"),
            Rule({"strategy": "inc", "loss": "constant"}, "vanilla"),
        ),
    ),
    Layout(
        "ren_ratio",
        "Consistency ratio r: INC's queries, a share r answered as SELF (Ren et al. 2024, Exp-III, Figs. 2/4)",
        "Ratio",
        ("base",),
        (),  # Ren et al. give Exp-III as figures only: no published numbers to show beside
        ("ren_ratio",),
        {"base": "Base"},
        (
            Rule({"strategy": "ren_ratio", "loss": "constant", "ratio": ANY}, "{ratio:g}"),
            Rule({"strategy": "inc", "loss": "constant"}, "0"),
            Rule({"strategy": "self", "loss": "constant"}, "1"),
        ),
        label_of=_ratio_label,
        sort=_by_number,
    ),
):
    LAYOUTS.register(_layout.name, _layout)


def table_choices() -> list[str]:
    """What ``--table`` accepts: the paper's table numbers, the named layouts, and ``auto``."""
    names = {a for _, lay in LAYOUTS.items() for a in lay.aliases} - {"main"}
    return sorted(names, key=lambda a: (not a.isdigit(), int(a) if a.isdigit() else 0, a)) + ["auto"]


def layout_of(table: str) -> Layout:
    """The layout that ``--table`` names (a paper table number or a layout name)."""
    found = next((lay for _, lay in LAYOUTS.items() if str(table) in lay.aliases), None)
    return found or LAYOUTS.get(str(table))


def infer_layout(jobs: pd.DataFrame) -> Layout:
    """Guess the paper table a sweep reproduces from what its jobs vary."""
    strategies = set(jobs["strategy"])
    subsets = set(jobs.loc[jobs["strategy"] == "subset", "subset"])
    full = jobs[jobs["strategy"] == "full"]
    kaft = full[full["loss"] == "kaft"]
    if "wrong_ratio" in strategies:
        name = "10"
    elif "ren_ratio" in strategies:
        name = "ren_ratio"
    elif "context" in jobs and jobs["context"].any():
        name = "ren2"
    elif strategies & {"har", "inc", "self"}:
        name = "ren"
    elif jobs["detection"].nunique() > 1 or ("wrong_only" in strategies and subsets and subsets <= {"random"}):
        name = "4"
    elif subsets:
        name = "9"
    elif jobs["k"].nunique() > 1:
        name = "5"
    elif jobs["method"].fillna("").astype(str).str.startswith("sma_").any():  # configured SMA rows
        name = "sma"
    elif strategies <= {"full", "none"} and full["loss"].nunique() > 1:
        name = "12" if set(full["loss"]) <= {"constant", "kaft", "auto_adapt"} else "losses"
    elif kaft["alpha"].nunique() > 1 or kaft["beta"].nunique() > 1:
        name = "13"
    else:
        name = "main"
    return LAYOUTS.get(name)
