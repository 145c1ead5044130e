"""The KaFT paper's claims as data (:data:`CLAIMS`), each checked on the testbed as a paired difference over seeds.

A :class:`Claim` names the sweep that tests it, the rows it compares (row ids of the sweep's table layout, or a
rule that picks them from what the sweep has), the rows it needs, the paper's direction and where the paper says
so. :func:`findings` turns every claim into :class:`Finding` s — mean difference, 95 % t interval, verdict
(:mod:`analysis.stats`) — from the sweeps' results; nothing about a claim lives in code.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import stats as S
from analysis.jobs import ACC, BASE_ACC, jobs_frame, num
from analysis.layouts import layout_of

Rows = dict  # {row id: {seed: Avg. (%)}}
AVG = "avg"  #: a claim's metric: the average over the benchmarks, else one benchmark's accuracy (``acc/<name>``)


# ----------------------------------------------------------------------------------------------- numbers
def _columns(metric: str) -> tuple[str, str]:
    """The jobs-frame columns of ``metric`` (:data:`AVG` or a benchmark name): fine-tuned, base model."""
    return ("avg", "base_avg") if metric == AVG else (f"{ACC}{metric}", f"{BASE_ACC}{metric}")


def per_seed(jobs: pd.DataFrame, layout: str, metric: str = AVG) -> Rows:
    """``{row id: {seed: value (%)}}`` over finished jobs in ``layout`` (data seeds of one seed averaged), the value
    being Avg. or, with ``metric`` a benchmark's name, that benchmark's accuracy (an EAFT-style claim is about the
    in-domain and the out-of-domain benchmark apart); ``base`` also from the jobs' own base evaluation where the
    sweep has no base job."""
    col, base_col = _columns(metric)
    if col not in jobs:
        return {}
    done = jobs[(jobs["status"] == "done") & jobs[col].notna()]
    if done.empty:
        return {}
    seeds = done["seed"].map(str)
    keyed = pd.DataFrame({"row": layout_of(layout).row_keys(done), "seed": seeds, "avg": done[col]})
    base = done[base_col].notna() if base_col in done else pd.Series(False, index=done.index)
    keyed = pd.concat(
        [keyed, pd.DataFrame({"row": "_base_metrics", "seed": seeds[base], "avg": done.loc[base, base_col]})]
    )
    out: Rows = {}
    for (row, seed), vals in keyed.groupby(["row", "seed"], sort=False)["avg"]:
        out.setdefault(row, {})[seed] = statistics.fmean(vals.tolist())
    if "base" not in out and "_base_metrics" in out:
        out["base"] = out["_base_metrics"]
    out.pop("_base_metrics", None)
    return out


def ms(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std over seeds) of accuracies in %."""
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def paired(a: dict[str, float], b: dict[str, float]) -> list[float]:
    """a − b on every seed both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def alpha_beta_grid(ab: Rows) -> tuple[dict[float, dict[float, dict[str, float]]], list[float], list[float]]:
    """Table 13's rows as ``{α: {β: {seed: Avg}}}`` with the sorted α and β values."""
    grid: dict[float, dict[float, dict[str, float]]] = {}
    for k, seeds in ab.items():
        if k.startswith("a") and "_b" in k:
            a, b = (float(x) for x in k[1:].split("_b"))
            grid.setdefault(a, {})[b] = seeds
    return grid, sorted(grid), sorted({b for by in grid.values() for b in by})


def _mean_over(rows: Rows, axis: str) -> Rows:
    """Rows ``"α=…"`` (``axis`` = "a", mean over β) or ``"β=…"`` (mean over α), per seed."""
    out: dict[str, dict[str, list[float]]] = {}
    for a, by in alpha_beta_grid(rows)[0].items():
        for b, seeds in by.items():
            key = f"α={a:g}" if axis == "a" else f"β={b:g}"
            for s, v in seeds.items():
                out.setdefault(key, {}).setdefault(s, []).append(v)
    return {k: {s: statistics.fmean(v) for s, v in by.items()} for k, by in out.items()}


# ----------------------------------------------------------------------------------------------- claims as data
@dataclass
class Finding:
    """One claim of the paper as a paired difference over seeds: the paper says ``diffs`` > ``margin``."""

    claim: str
    paper: str  # the paper's direction and where it says so
    testbed: str  # the compared rows, mean ± std over seeds
    diffs: list[float]
    margin: float = 0.0

    @property
    def interval(self) -> S.Interval | None:
        return S.t_interval(self.diffs)

    @property
    def verdict(self) -> str:
        return S.verdict(self.interval, self.margin)

    def difference(self) -> str:
        return self.interval.text() if self.diffs else "n/a"


@dataclass(frozen=True)
class Claim:
    """The paper says row ``hi`` beats row ``lo`` by more than ``margin`` points, for each (hi, lo) of ``pairs``
    (or of ``pairs(rows)``, a rule over the rows the sweep has). ``text`` and ``requires`` may name the pair's rows
    as ``{hi}`` / ``{lo}`` (text: their labels); a pair is checked only when the sweep has every row of
    ``requires``. ``view`` reads the sweep's rows first (:data:`VIEWS`). ``metric`` is what is compared: the
    average over the benchmarks (:data:`AVG`) or one benchmark's accuracy by name; a negative ``margin`` states
    "does not lose more than |margin| points" (``hi − lo > margin``)."""

    sweep: str
    text: str
    paper: str
    pairs: tuple | Callable[[Rows], list]
    requires: tuple = ()
    labels: dict | Callable[[str], str] | None = None
    view: str = "rows"
    margin: float = 0.0
    metric: str = AVG

    def label(self, row: str) -> str:
        if callable(self.labels):
            return self.labels(row)
        return (self.labels or {}).get(row, row)

    def check(self, rows: Rows) -> list[Finding]:
        rows = VIEWS[self.view](rows)
        out = []
        for hi, lo in self.pairs(rows) if callable(self.pairs) else self.pairs:
            if all(r.format(hi=hi, lo=lo) in rows for r in self.requires):
                a, b, la, lb = rows.get(hi, {}), rows.get(lo, {}), self.label(hi), self.label(lo)
                out.append(
                    Finding(
                        self.text.format(hi=la, lo=lb),
                        f"{la} − {lb} > {self.margin:g}: {self.paper}",
                        f"{la} {ms(list(a.values()))}, {lb} {ms(list(b.values()))}",
                        paired(a, b),
                        self.margin,
                    )
                )
        return out


VIEWS: dict[str, Callable[[Rows], Rows]] = {
    "rows": lambda rows: rows,
    "mean over β": lambda rows: _mean_over(rows, "a"),  # rows "α=…"
    "mean over α": lambda rows: _mean_over(rows, "b"),  # rows "β=…"
}


def _numbers(rows: Rows) -> list[str]:
    """The rows named by a number (λ, or the number after "α=" / "β="), in ascending order."""
    return sorted((k for k in rows if num(k.split("=")[-1]) is not None), key=lambda k: float(k.split("=")[-1]))


def ascending(rows: Rows) -> list[tuple[str, str]]:
    return S.adjacent(_numbers(rows))


def extremes(rows: Rows) -> list[tuple[str, str]]:
    keys = _numbers(rows)
    return [(keys[0], keys[-1])] if len(keys) > 1 else []


def middle_beta(rows: Rows) -> list[tuple[str, str]]:
    keys = _numbers(rows)
    return [("β=0.5", k) for k in keys if k != "β=0.5"] if "β=0.5" in keys and len(keys) > 2 else []


MAIN = {
    "base": "base",
    "wrong_only": "wrong-only",
    "vanilla": "vanilla",
    "no_conflict": "no-conflict",
    "self_align": "self-aligning",
    "self_align_majority": "self-aligning (majority)",
    "kaft": "KaFT",
    "constant": "constant",
    "auto_adapt": "auto-adapt",
}
DETECTORS = {
    "icl": "ICL (Ren et al.)",
    "no_diverse_query": "w/o diverse query",
    "no_sampling": "w/o sampling",
    "no_both": "w/o both",
    "diversified": "diversified",
    "random": "random",
}
KAFT_VS_NO_CONFLICT = "KaFT beats no-conflict"
ADDING_WRONG = "Adding some wrong data (λ = 25%) beats none (λ = 0)"
BOTH = ("{hi}", "{lo}")

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "table6_halueval",
        "Training on the wrong subset alone collapses the model",
        "by 2.8 to 27 points (Tables 6/9)",
        (("base", "wrong_only"),),
        labels=MAIN,
    ),
    Claim(
        "table6_halueval",
        "Fine-tuning helps: vanilla SFT beats the base model",
        "by 0.3-3.3 points (Table 2)",
        (("vanilla", "base"),),
        labels=MAIN,
    ),
    Claim(
        "table6_halueval",
        "Conflicting data hurts: no-conflict beats vanilla SFT",
        "3 of 4 models (Table 2)",
        (("no_conflict", "vanilla"),),
        labels=MAIN,
    ),
    Claim("table6_halueval", "KaFT beats vanilla SFT", "all models (Tables 2/3)", (("kaft", "vanilla"),), labels=MAIN),
    Claim(
        "table6_halueval",
        KAFT_VS_NO_CONFLICT,
        "all models, by 0.6-1.3 points (Table 2)",
        (("kaft", "no_conflict"),),
        labels=MAIN,
    ),
    Claim(
        "table6_halueval",
        "KaFT beats {lo}",
        "all models, by 0.4-1.7 points (Table 2)",
        (("kaft", "self_align"), ("kaft", "self_align_majority")),
        ("{lo}",),
        MAIN,
    ),
    Claim(
        "table12_rewards",
        "Reward strategies: {hi} > {lo}",
        "all models (Table 12, Fig. 3)",
        tuple(S.adjacent(["kaft", "auto_adapt", "constant"])),
        labels=MAIN,
    ),
    Claim(
        "table13_alpha_beta",
        "Accuracy falls as α (the wrong subset's reward) rises (mean over β): {hi} > {lo}",
        "a continuous decline (Fig. 4)",
        ascending,
        view="mean over β",
    ),
    Claim(
        "table13_alpha_beta",
        "A middle β (0.5, the might-wrong reward) is best (mean over α): {hi} > {lo}",
        "on Mistral-7B; Qwen1.5-7B peaks at β = 0.1 (Fig. 4, Table 13)",
        middle_beta,
        view="mean over α",
    ),
    Claim(
        "table4_detection",
        "Training on diversified detection's wrong set hurts more than on {hi}'s",
        "27.2 vs 30.2-49.0; random 54.4 (Table 4)",
        tuple((k, "diversified") for k in ("icl", "no_diverse_query", "no_sampling", "no_both", "random")),
        BOTH,
        DETECTORS,
    ),
    Claim(
        "table9_subsets",
        "One subset only: might-right beats right",
        "3 of 4 models (Fig. 2b, Table 9)",
        (("might-right", "right"),),
    ),
    Claim(
        "table9_subsets",
        "One subset only: wrong is the worst (below {hi})",
        "all models (Fig. 2b, Table 9)",
        tuple((k, "wrong") for k in ("right", "might-right", "might-wrong", "random")),
        BOTH,
    ),
    Claim(
        "table10_wrong_ratio",
        ADDING_WRONG,
        "slightly (Fig. 2c; Table 10: +0.2, +0.6)",
        (("0.25", "0"),),
        BOTH,
        lambda k: f"λ={float(k):.0%}",
    ),
    Claim(
        "table10_wrong_ratio",
        "All wrong data (λ = 100%) is worse than none",
        "on one of two models (Table 10, an extraction marked doubtful)",
        extremes,
        labels=lambda k: f"λ={float(k):.0%}",
    ),
    Claim(
        "table5_partitions",
        "More conflict subsets help: {hi} > {lo}",
        "+0.16, +0.20 (Table 5)",
        tuple(S.adjacent(["k8", "k4", "k2"])),
        ("k2", "k4", "k8"),
        {"k2": "K=2", "k4": "K=4", "k8": "K=8"},
    ),
    Claim(
        "ren_har_inc_self",
        "Ren et al.: harmonious data (HAR) beats incompatible data (INC)",
        "every model and domain (Ren et al. Table 1)",
        (("har", "inc"),),
        BOTH,
        {"har": "HAR", "inc": "INC"},
    ),
    Claim(
        "ren_har_inc_self",
        "Ren et al.: self-aligned data (SELF) beats INC",
        "mostly (Ren et al. Table 1)",
        (("self", "inc"),),
        ("har", *BOTH),
        {"self": "SELF", "inc": "INC"},
    ),
)


# issue 21: the claims on responses (sweeps/responses.yaml: the free-form testbed, detection=mc_conversion)
RESPONSES = {
    "base": "base",
    "vanilla": "vanilla SFT",
    "eaft": "EAFT",
    "kaft": "KaFT",
    "no_conflict": "no-conflict",
    "sma_dpo_dataset_self": "DPO dataset/self",
}
EAFT_PAPER = 'EAFT "consistently matches the downstream performance of standard SFT while significantly mitigating'
RESPONSE_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "responses",
        "In domain, multiple choice (testbed_id), EAFT does not lose to vanilla SFT by more than 2 points",
        EAFT_PAPER + ' the degradation of general capabilities" (Abstract; §4.2: "competitive performance on target '
        'domain", Tab. 1)',
        (("eaft", "vanilla"),),
        labels=RESPONSES,
        margin=-2.0,
        metric="testbed_id",
    ),
    Claim(
        "responses",
        "In domain, in the trained format (testbed_ff, free-form), EAFT does not lose to vanilla SFT by more than 2 "
        "points",
        EAFT_PAPER + ' the degradation of general capabilities" (Abstract; Tab. 1: the target domain in its own '
        "format)",
        (("eaft", "vanilla"),),
        labels=RESPONSES,
        margin=-2.0,
        metric="testbed_ff",
    ),
    Claim(
        "responses",
        "Out of domain (testbed_ood), EAFT forgets less than vanilla SFT",
        EAFT_PAPER + ' the degradation of general capabilities" (Abstract; §4.2 "significantly mitigating '
        'catastrophic forgetting on general capabilities", Tab. 1)',
        (("eaft", "vanilla"),),
        labels=RESPONSES,
        metric="testbed_ood",
    ),
    Claim(
        "responses",
        "SMA: SFT on the data set (vanilla) beats DPO dataset/self",
        "Baichuan1-Chat Δ Avg. −10.18 vs −21.56, FactualBench 55.86 vs 5.40 (SMA Table 5; Qwen2 has no "
        "dataset/self row; self/self, the paper's best, has no pairs on the testbed)",
        (("vanilla", "sma_dpo_dataset_self"),),
        labels=RESPONSES,
    ),
    Claim(
        "responses",
        "Free-form testbed, MC-conversion detection: KaFT beats vanilla SFT",
        "all models (KaFT Tables 2/3)",
        (("kaft", "vanilla"),),
        labels=RESPONSES,
    ),
    Claim(
        "responses",
        "Free-form testbed, MC-conversion detection: KaFT beats no-conflict",
        "all models, by 0.6-1.3 points (KaFT Table 2)",
        (("kaft", "no_conflict"),),
        labels=RESPONSES,
    ),
)

CLAIMS += RESPONSE_CLAIMS
# issue 22: Ren et al.'s Exp-II (sweeps/ren_contextualized.yaml; its own file, analysis/REPORT_ren.md)
CLAIMS += (
    Claim(
        "ren_contextualized",
        "Ren et al.: contextualized IFT beats vanilla IFT on the incompatible set (INC)",
        "+3.98 to +9.48 points overall, every model (Ren et al. Table 2)",
        (("contextualized", "vanilla"),),
        BOTH,
        {"contextualized": "contextualized INC", "vanilla": "INC"},
    ),
)
# what a sweep's own report (analysis.report --section) says beside its claims: the rows and detectors it cannot have
SECTION_NOTES: dict[str, tuple[str, ...]] = {
    "responses": (
        "## What the free-form testbed cannot test",
        "",
        "- **Generative detection** (`detection=generative`, KaFT Eq. 1 over sampled responses judged by a "
        "verifier) cannot split the testbed's items: its base model was pretrained on multiple-choice prompts and "
        "answers a free-form question with an options list, never with the fact, so every item's Score is 0 and "
        "every item is *wrong*. KaFT's ordering is therefore checked with MC-conversion detection (ILP §3.1.1: "
        "the items converted to multiple choice for detection only; training stays on the responses).",
        "- **SMA's self/self DPO and SFT on self answers** (SMA Table 5's best rows) need correct self-generated "
        "responses, which the testbed's base model never gives for the same reason (`pairs=self_self` stops with "
        "a one-line error): only the data set's rows (SFT / dataset = vanilla SFT, DPO dataset / self) are run.",
        "",
    ),
}


def sweep_rows(out: Path, sweep: str, layout: str, metric: str = AVG) -> Rows | None:
    """The per-seed rows of ``out/<sweep>`` in ``layout`` (``metric``: :func:`per_seed`); None without results."""
    d = out / sweep
    jobs = jobs_frame(d) if d.exists() else None
    return per_seed(jobs, layout, metric) if jobs is not None and not jobs.empty else None


def findings(out: Path, layouts: dict[str, str], claims: Sequence[Claim] = CLAIMS) -> list[Finding]:
    """Every claim whose sweep has results, as findings in the order of ``claims``; ``layouts`` gives each
    sweep's table layout."""
    rows: dict[tuple[str, str], Rows | None] = {}
    found = []
    for c in claims:
        if c.sweep not in layouts:
            continue
        key = (c.sweep, c.metric)
        if key not in rows:
            rows[key] = sweep_rows(out, c.sweep, layouts[c.sweep], c.metric)
        if rows[key]:
            found += c.check(rows[key])
    return found
