"""The testbed reproduction report: ``python -m analysis.report [--seeds 0,1,2,3,4] [--out analysis/REPORT.md]``.

Runs the KaFT paper's sweeps (``sweeps/``) on the embedded testbed over several seeds - on the testbed a seed is a
whole replicate: its own world, pretrained model, probing and fine-tuning - then writes a Markdown report: the
testbed models themselves, the paper's claims checked against the results (paired over seeds: the mean difference
with a 95 % t interval and a three-way verdict, :mod:`analysis.stats`), one table per sweep in the paper's layout
(:mod:`analysis.table`) and the paper's figures (:mod:`analysis.figures`). Every number in the report is computed
from the sweeps' ``results.json`` files and the cached testbed models, and explanatory text is worded by the
computed intervals; nothing is typed in.

Finished jobs are skipped on a re-run (run directories are derived from the overrides), so an interrupted report
resumes where it stopped; ``--only`` runs some of the sweeps, ``--no-run`` only re-renders from existing results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from analysis import stats as S
from analysis import table as T
from kaft.testbed.model import describe_cpu

ROOT = Path(__file__).resolve().parents[1]

# sweep -> (paper table for analysis.table, extra overrides). Order: the main comparison first (its jobs are
# reused by the others through the cache).
SWEEPS: dict[str, tuple[str, list[str]]] = {
    "table6_halueval": ("2", []),        # base, wrong-only, vanilla, no-conflict, self-aligning, KaFT
    "table12_rewards": ("12", []),
    "table13_alpha_beta": ("13", []),
    "table4_detection": ("4", []),
    "table9_subsets": ("9", []),
    "table10_wrong_ratio": ("10", []),
    "table5_partitions": ("5", []),
    "losses": ("losses", []),
    "ren_har_inc_self": ("ren", []),
}
FIGURES = (("2a", "table6_halueval"), ("2b", "table9_subsets"), ("2c", "table10_wrong_ratio"),
           ("3", "table12_rewards"), ("4", "table13_alpha_beta"))


# ----------------------------------------------------------------------------------------------- running
def run_sweep(name: str, out: Path, seeds: list[int], extra: list[str]) -> float:
    """One multirun of ``sweeps/<name>.yaml`` over ``seeds`` (one process, Hydra's basic launcher)."""
    cmd = [sys.executable, "-m", "kaft.run", "-m", f"+sweeps={name}", f"seed={','.join(map(str, seeds))}",
           "logger=none", "progress=false", f"hydra.sweep.dir={out / name}", *extra]
    t0 = time.time()
    print(f"[report] {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    from kaft.cache import atomic_write_text

    atomic_write_text(out / f"{name}.log", proc.stdout[-200_000:] + proc.stderr[-200_000:])
    if proc.returncode not in (0, 1):  # 1 = some jobs failed (recorded in their results.json)
        raise SystemExit(f"[report] sweep {name} failed (exit {proc.returncode}); see {out / (name + '.log')}")
    return time.time() - t0


# ----------------------------------------------------------------------------------------------- numbers
def per_seed(runs: Sequence[T.Run], layout: str) -> dict[str, dict[str, float]]:
    """``{row id: {seed: Avg. (%)}}`` over finished jobs in ``layout`` (data seeds of one seed averaged); ``base``
    also from the jobs' own base evaluation where the sweep has no base job."""
    vals: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r.status != "done" or r.avg is None:
            continue
        vals.setdefault(T.row_key(layout, r), {}).setdefault(str(r.seed), []).append(r.avg)
        if r.base_avg is not None:
            vals.setdefault("_base_metrics", {}).setdefault(str(r.seed), []).append(r.base_avg)
    out = {k: {s: statistics.fmean(v) for s, v in by.items()} for k, by in vals.items()}
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


@dataclass
class Finding:
    """One claim of the paper as a paired difference over seeds: the paper says ``diffs`` > ``margin``."""

    claim: str
    paper: str     # the paper's direction and where it says so
    testbed: str   # the compared rows, mean ± std over seeds
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


class Claims:
    """The paper's claims, each checked against one sweep as paired differences over seeds."""

    def __init__(self, out: Path):
        self.out, self.rows = out, []

    def sweep(self, name: str, layout: str) -> dict[str, dict[str, float]] | None:
        d = self.out / name
        runs = T.collect_runs(d) if d.exists() else []
        return per_seed(runs, layout) if runs else None

    def better(self, claim: str, paper: str, rows: dict, hi: str, lo: str, labels: dict[str, str],
               margin: float = 0.0) -> Finding:
        """The paper says row ``hi`` − row ``lo`` > ``margin`` points, paired over seeds."""
        a, b = rows.get(hi, {}), rows.get(lo, {})
        f = Finding(claim, f"{labels[hi]} − {labels[lo]} > {margin:g}: {paper}",
                    f"{labels[hi]} {ms(list(a.values()))}, {labels[lo]} {ms(list(b.values()))}", paired(a, b), margin)
        self.rows.append(f)
        return f

    def order(self, claim: str, paper: str, rows: dict, order: Sequence[str], labels: dict[str, str]) -> None:
        """An ordering of several rows (best first) as one pairwise claim per adjacent pair."""
        for hi, lo in S.adjacent(order):
            self.better(f"{claim}: {labels[hi]} > {labels[lo]}", paper, rows, hi, lo, labels)

    def find(self, claim: str) -> Finding | None:
        return next((f for f in self.rows if f.claim == claim), None)


L = {"base": "base", "wrong_only": "wrong-only", "vanilla": "vanilla", "no_conflict": "no-conflict",
     "self_align": "self-aligning", "self_align_majority": "self-aligning (majority)", "kaft": "KaFT",
     "constant": "constant", "auto_adapt": "auto-adapt"}
KAFT_VS_NO_CONFLICT = "KaFT beats no-conflict"


def _main_claims(c: Claims) -> None:
    main = c.sweep("table6_halueval", "main")
    if not main:
        return
    c.better("Training on the wrong subset alone collapses the model", "by 2.8 to 27 points (Tables 6/9)", main,
             "base", "wrong_only", L)
    c.better("Fine-tuning helps: vanilla SFT beats the base model", "by 0.3-3.3 points (Table 2)", main, "vanilla",
             "base", L)
    c.better("Conflicting data hurts: no-conflict beats vanilla SFT", "3 of 4 models (Table 2)", main,
             "no_conflict", "vanilla", L)
    c.better("KaFT beats vanilla SFT", "all models (Tables 2/3)", main, "kaft", "vanilla", L)
    c.better(KAFT_VS_NO_CONFLICT, "all models, by 0.6-1.3 points (Table 2)", main, "kaft", "no_conflict", L)
    for sa in ("self_align", "self_align_majority"):
        if sa in main:
            c.better(f"KaFT beats {L[sa]}", "all models, by 0.4-1.7 points (Table 2)", main, "kaft", sa, L)


def _reward_claims(c: Claims) -> None:
    rew = c.sweep("table12_rewards", "12")
    if rew:
        c.order("Reward strategies", "all models (Table 12, Fig. 3)", rew, ["kaft", "auto_adapt", "constant"], L)


def _alpha_beta(ab: dict) -> tuple[dict[float, dict[float, dict[str, float]]], list[float], list[float]]:
    """Table 13's grid as ``{α: {β: {seed: Avg}}}`` with the sorted α and β values."""
    grid: dict[float, dict[float, dict[str, float]]] = {}
    for k, seeds in ab.items():
        if k.startswith("a") and "_b" in k:
            a, b = (float(x) for x in k[1:].split("_b"))
            grid.setdefault(a, {})[b] = seeds
    return grid, sorted(grid), sorted({b for by in grid.values() for b in by})


def _mean_over(grid: dict, axis: str) -> dict[str, dict[str, float]]:
    """Rows ``"α=…"`` (``axis`` = "a", mean over β) or ``"β=…"`` (mean over α), per seed."""
    out: dict[str, dict[str, list[float]]] = {}
    for a, by in grid.items():
        for b, seeds in by.items():
            key = f"α={a:g}" if axis == "a" else f"β={b:g}"
            for s, v in seeds.items():
                out.setdefault(key, {}).setdefault(s, []).append(v)
    return {k: {s: statistics.fmean(v) for s, v in by.items()} for k, by in out.items()}


def _alpha_beta_claims(c: Claims) -> None:
    ab = c.sweep("table13_alpha_beta", "13")
    if not ab:
        return
    grid, alphas, betas = _alpha_beta(ab)
    if len(alphas) > 1:
        rows = _mean_over(grid, "a")
        c.order("Accuracy falls as α (the wrong subset's reward) rises (mean over β)", "a continuous decline "
                "(Fig. 4)", rows, [f"α={a:g}" for a in alphas], {k: k for k in rows})
    if 0.5 in betas and len(betas) > 2:
        rows = _mean_over(grid, "b")
        for b in (x for x in betas if x != 0.5):
            c.better(f"A middle β (0.5, the might-wrong reward) is best (mean over α): β=0.5 > β={b:g}",
                     "on Mistral-7B; Qwen1.5-7B peaks at β = 0.1 (Fig. 4, Table 13)", rows, "β=0.5", f"β={b:g}",
                     {k: k for k in rows})


def _detection_claims(c: Claims) -> None:
    det = c.sweep("table4_detection", "4")
    if not det or "diversified" not in det:
        return
    names = {"icl": "ICL (Ren et al.)", "no_diverse_query": "w/o diverse query", "no_sampling": "w/o sampling",
             "no_both": "w/o both", "diversified": "diversified", "random": "random"}
    for k in (k for k in ("icl", "no_diverse_query", "no_sampling", "no_both", "random") if k in det):
        c.better(f"Training on diversified detection's wrong set hurts more than on {names[k]}'s",
                 "27.2 vs 30.2-49.0; random 54.4 (Table 4)", det, k, "diversified", names)


def _subset_claims(c: Claims) -> None:
    sub = c.sweep("table9_subsets", "9")
    if not sub:
        return
    lab = {k: k for k in ("wrong", "might-wrong", "might-right", "right", "random", "base")}
    c.better("One subset only: might-right beats right", "3 of 4 models (Fig. 2b, Table 9)", sub, "might-right",
             "right", lab)
    for k in (k for k in ("right", "might-right", "might-wrong", "random") if k in sub and "wrong" in sub):
        c.better(f"One subset only: wrong is the worst (below {k})", "all models (Fig. 2b, Table 9)", sub, k,
                 "wrong", lab)


def _ratio_claims(c: Claims) -> None:
    lam = c.sweep("table10_wrong_ratio", "10")
    keys = sorted((k for k in lam if T._num(k) is not None), key=float) if lam else []
    if len(keys) < 2:
        return
    lab = {k: f"λ={float(k):.0%}" for k in keys}
    if "0.25" in lam and "0" in lam:
        c.better("Adding some wrong data (λ = 25%) beats none (λ = 0)", "slightly (Fig. 2c; Table 10: +0.2, +0.6)",
                 lam, "0.25", "0", lab)
    c.better("All wrong data (λ = 100%) is worse than none", "on one of two models (Table 10, an extraction marked "
             "doubtful)", lam, keys[0], keys[-1], lab)


def _partition_and_ren_claims(c: Claims) -> None:
    part = c.sweep("table5_partitions", "5")
    if part and {"k2", "k4", "k8"} <= set(part):
        c.order("More conflict subsets help", "+0.16, +0.20 (Table 5)", part, ["k8", "k4", "k2"],
                {"k2": "K=2", "k4": "K=4", "k8": "K=8"})
    ren = c.sweep("ren_har_inc_self", "ren")
    lab = {"har": "HAR", "inc": "INC", "self": "SELF"}
    if ren and {"har", "inc"} <= set(ren):
        c.better("Ren et al.: harmonious data (HAR) beats incompatible data (INC)", "every model and domain (Ren et "
                 "al. Table 1)", ren, "har", "inc", lab)
        if "self" in ren:
            c.better("Ren et al.: self-aligned data (SELF) beats INC", "mostly (Ren et al. Table 1)", ren, "self",
                     "inc", lab)


def findings(out: Path) -> list[Finding]:
    """The paper's claims, each a paired difference over seeds with its interval and verdict, from the results."""
    c = Claims(out)
    for part in (_main_claims, _reward_claims, _alpha_beta_claims, _detection_claims, _subset_claims,
                 _ratio_claims, _partition_and_ren_claims):
        part(c)
    return c.rows


# ----------------------------------------------------------------------------------------------- the testbed
def testbed_models(seeds: Sequence[int], cache_dir: str) -> list[dict]:
    """For each seed's testbed model that the sweeps built (cached; others are skipped, nothing is built): build
    stats, the released readout and the 0-shot accuracy by kind, released and with the pretraining readout (what
    the model knows), and the training set's count of items by kind."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaft.cache import Cache
    from kaft.testbed.model import build_model, model_key
    from kaft.testbed.report import accuracy_by_kind, readout
    from kaft.testbed.world import build_world, resolve_config

    out = []
    for s in seeds:
        cfg = resolve_config({"seed": s})
        if not Cache(cache_dir).has("testbed_model", model_key(cfg)):
            print(f"[report] no testbed model for seed {s} in {cache_dir}: its section is left out", flush=True)
            continue
        path = build_model(cfg, cache_dir, progress=False)
        stats = json.loads((path / "testbed.json").read_text())["stats"]
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
        world = build_world(cfg)
        ro = readout(world, model, tok, cfg["model"]["binding"])
        acc0 = {name: accuracy_by_kind(model, tok, world.split(name)) for name in world.splits()}
        kinds = dict(Counter(it.meta.get("kind") for it in world.split("train")))
        out.append({"seed": s, "stats": stats, "readout": ro, "acc0": acc0, "n_train_by_kind": kinds})
    return out


def _probes(out: Path) -> dict[str, dict]:
    """One results.json per seed of the main sweep that carries detection's truth-aware numbers (one probe per
    seed: every job of a seed shares it)."""
    d = out / "table6_halueval"
    runs = [r for r in T.collect_runs(d) if r.status == "done"] if d.exists() else []
    probes: dict[str, dict] = {}
    for r in runs:
        if "mean_by_kind" in (r.res.get("detection") or {}):
            probes.setdefault(str(r.seed), r.res)
    return probes


def wrong_subset_share(probes: dict[str, dict], n_contradict: dict[str, int]) -> tuple[list[float], list[float]]:
    """(recall, precision) in % over seeds of the wrong (lowest-Score) subset for the planted contradictions.
    Recall = contradictions in it / all contradictions (results.json's ``contradict_in_lowest_subset``);
    precision = contradictions in it / its size = recall · n_contradict / |wrong|, where n_contradict is
    ``detection.n_by_kind.contradict`` if results.json has it, else counted in the seed's world
    (``n_contradict``); seeds without it have no precision."""
    recall, precision = [], []
    for seed, res in probes.items():
        det = res["detection"]
        if "contradict_in_lowest_subset" not in det:
            continue
        r = det["contradict_in_lowest_subset"]
        recall.append(100 * r)
        n_c = (det.get("n_by_kind") or {}).get("contradict", n_contradict.get(seed))
        sizes = list((res.get("subsets") or {}).values())
        if n_c is not None and sizes and sizes[0]:
            precision.append(100 * r * n_c / sizes[0])
    return recall, precision


def score_by_kind(out: Path, n_contradict: dict[str, int] | None = None) -> list[str]:
    """Mean diversified Score by kind of training item, the AUROC with which a low Score finds the planted
    contradictions, and the wrong subset's recall and precision for them, over seeds (main sweep)."""
    probes = _probes(out)
    if not probes:
        return []
    dets = [res["detection"] for res in probes.values()]
    kinds = sorted({k for det in dets for k in det["mean_by_kind"]})
    vals = {k: [100 * det["mean_by_kind"][k] for det in dets if k in det["mean_by_kind"]] for k in kinds}
    au = [100 * det["auroc_contradict"] for det in dets if "auroc_contradict" in det]
    recall, precision = wrong_subset_share(probes, n_contradict or {})
    prec = (f"precision (contradictions among the wrong subset's items) {ms(precision)} %"
            + (f" on {len(precision)} of {len(recall)} seeds" if len(precision) < len(recall) else "")
            if precision else "precision n/a (the number of contradicting items is in neither results.json nor "
                              "a cached testbed world)")
    return ["Diversified probing (the paper's detector, No = Nr = 10) on the training set, mean ± std over seeds: "
            "Score (%) by kind of item " + ", ".join(f"{k} {ms(v)}" for k, v in vals.items()) +
            f"; AUROC of a low Score for the contradicting items {ms(au)}; the wrong subset's recall (share of all "
            f"contradicting items that it holds) {ms(recall)} %, {prec}.", ""]


def _testbed_section(models: Sequence[dict], out: Path) -> list[str]:
    if not models:
        return []
    lines = ["## The testbed models", "",
             "One world and one pretrained model per seed (`kaft/testbed/`). *Released*: the model the pipeline "
             "fine-tunes, whose multiple-choice readout (head M) is weakened after pretraining to answer "
             "well-known format facts at `release_accuracy`; *knows*: the same model with its pretraining "
             "readout — the ceiling fine-tuning can restore. 0-shot accuracy (%) by kind of fact:", "",
             "| seed | build s | head M gain | split | kind | released | knows |", "|---:|---:|---:|---|---|---:|---:|"]
    for m in models:
        first = True
        for split, by in m["acc0"].items():
            for kind, v in by.items():
                if kind in ("n", "all"):
                    continue
                full = m["readout"]["acc0_full"][split][kind]
                lead = (f"| {m['seed']} | {m['stats'].get('build_seconds', float('nan')):.0f} | "
                        f"{m['readout']['gain']:.2f} |" if first else "| | | |")
                lines.append(f"{lead} {split} | {kind} | {100 * v:.1f} | {100 * full:.1f} |")
                first = False
    bench = ("test_id", "test_ood")  # the splits behind the testbed_id / testbed_ood benchmarks
    rel = [statistics.fmean(100 * m["acc0"][sp]["all"] for sp in bench) for m in models]
    full = [statistics.fmean(100 * m["readout"]["acc0_full"][sp]["all"] for sp in bench) for m in models]
    lines += ["", f"Average over the two benchmarks: released {ms(rel)}, knows {ms(full)} — the room fine-tuning "
              f"has to restore.", ""]
    return lines + score_by_kind(out, n_contradict(models))


def n_contradict(models: Sequence[dict]) -> dict[str, int]:
    """``{seed: number of contradicting training items}`` from the testbed worlds (for the wrong subset's
    precision; results.json counts only the share of them that the wrong subset holds)."""
    return {str(m["seed"]): m["n_train_by_kind"].get("contradict", 0) for m in models if "n_train_by_kind" in m}


def disagreements(rows: Sequence[Finding], out: Path, n_contradict: dict[str, int] | None = None) -> list[str]:
    """The claims that are not reproduced, contradicted ones first, and what the numbers say beside them."""
    if not rows:
        return ["No results yet: `python -m analysis.report` (without `--no-run`) runs the sweeps.", ""]
    off = sorted((f for f in rows if f.verdict != "reproduced"), key=lambda f: f.verdict != "contradicted")
    if not off:
        return ["Every claim above is reproduced: each interval lies on the paper's side of its threshold.", ""]
    lines = ["## Where the testbed does not reproduce the paper", ""]
    lines += [f"- **{f.claim}** — {f.verdict}: {f.testbed}; difference {f.difference()} points." for f in off]
    return lines + why_not_above_no_conflict(rows, out, n_contradict or {}) + [""]


def _beta_steps(out: Path) -> list[str]:
    """At KaFT's α = 0.1 (the main table's; else the smallest α swept), what raising β does, pair by pair."""
    ab = Claims(out).sweep("table13_alpha_beta", "13")
    grid, alphas, _ = _alpha_beta(ab or {})
    if not alphas:
        return []
    a = 0.1 if 0.1 in grid else alphas[0]
    betas = sorted(grid[a])
    out_ = []
    for lo, hi in zip(betas, betas[1:]):
        iv = S.t_interval(paired(grid[a][hi], grid[a][lo]))
        if iv is not None:
            word = S.effect(iv, "raises", "lowers", "does not resolvably change")
            out_.append(f"at α = {a:g}, raising β (the might-wrong subset's reward) from {lo:g} to {hi:g} {word} "
                        f"accuracy ({iv.text()} points)")
    return out_


def why_not_above_no_conflict(rows: Sequence[Finding], out: Path, n_contradict: dict[str, int]) -> list[str]:
    """Where KaFT is not shown above no-conflict: the testbed's numbers that bear on the paper's reason for the
    margin (conflicting data still teaches something), each worded by its own interval - no hand-written cause."""
    f = next((r for r in rows if r.claim == KAFT_VS_NO_CONFLICT), None)
    if f is None or not f.diffs or f.verdict == "reproduced":
        return []
    facts = []
    recall, precision = wrong_subset_share(_probes(out), n_contradict)
    if recall:
        facts.append(f"diversified probing's wrong subset holds {ms(recall)} % of the planted contradictions "
                     f"(recall); " + (f"{ms(precision)} % of its items are contradictions (precision)" if precision
                                      else "its precision is not known (no count of contradicting items)"))
    lam = next((r for r in rows if r.claim.startswith("Adding some wrong data")), None)
    if lam is not None and lam.diffs:
        facts.append("adding wrong data to the no-conflict set (λ = 0 → 25 %) " +
                     S.effect(lam.interval, "raises", "lowers", "does not resolvably change") +
                     f" accuracy ({lam.difference()} points)")
    facts += _beta_steps(out)
    if not facts:
        return []
    return ["", f"KaFT − no-conflict is {f.verdict} here ({f.difference()} points). The paper credits its margin to "
            "conflicting data that still teaches something; the testbed's numbers on that (each verb follows its "
            "95 % interval):", ""] + [f"- {x}." for x in facts]


# ----------------------------------------------------------------------------------------------- rendering
def claims_table(rows: Sequence[Finding]) -> list[str]:
    """The claims as paired differences: mean ± half-width [low, high] of the 95 % t interval over seeds."""
    if not rows:
        return ["## The paper's claims on the testbed", ""]
    return ["## The paper's claims on the testbed", "",
            "Each claim is a difference between two rows, paired on every seed (the same world, model and "
            "probing): its mean over seeds ± the half-width of a 95 % Student-t interval [low, high], in points. "
            "*reproduced*: the interval lies wholly on the paper's side of its threshold; *contradicted*: wholly on "
            "the other side; *not resolved*: it contains the threshold. Orderings of more than two rows are checked "
            "pair by pair.", "",
            "| claim | paper's direction | testbed (mean ± std) | paired difference | seeds | verdict |",
            "|---|---|---|---|---:|---|"] + [
        f"| {f.claim} | {f.paper} | {f.testbed} | {f.difference()} | {len(f.diffs)} | {f.verdict} |" for f in rows
    ] + [""]


def render(out: Path, seeds: list[int], timings: dict, report: Path, models: Sequence[dict] = ()) -> str:
    lines = ["# kaft testbed reproduction report", "",
             f"Generated by `python -m analysis.report --seeds {','.join(map(str, seeds))}` "
             f"({time.strftime('%Y-%m-%d')}, {describe_cpu()}; sweep results in "
             f"`{_rel(out)}`). Every number below is computed from the sweeps' results.json files: the average "
             f"zero-shot accuracy (%) over the two testbed benchmarks (testbed_id: held-out facts of the training "
             f"relations; testbed_ood: facts of other relations), mean ± std over {len(seeds)} seeds, each seed a "
             f"world and model of its own.", ""]
    if timings:
        total = sum(timings.values())
        lines += [f"Wall time of the sweeps: {total / 60:.1f} min (" +
                  ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items()) + ").", ""]
    rows = findings(out)
    lines += claims_table(rows) + disagreements(rows, out, n_contradict(models))
    lines += _testbed_section(models, out) + ["## Tables", ""]
    for name, (tab, _) in SWEEPS.items():
        d = out / name
        if not d.exists():
            continue
        runs = T.collect_runs(d)
        if runs:
            lines += [f"### `sweeps/{name}.yaml`", "",
                      T.render(T.build_table(runs, tab), "md").strip(), ""]
    figs = report.parent / "figures"
    made = []
    from analysis import figures as F

    for fid, sweep in FIGURES:
        if (out / sweep).exists():
            try:
                made += F.make_figure(T.collect_runs(out / sweep), fid, figs)
            except ValueError as e:
                lines.append(f"(figure {fid} not drawn: {e})")
    if made:
        lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in made if p.suffix == ".png"] + [""]
    return "\n".join(lines) + "\n"


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", default=str(ROOT / "analysis" / "REPORT.md"))
    ap.add_argument("--sweeps-dir", default=str(ROOT / "multirun" / "report"))
    ap.add_argument("--only", help="comma-separated sweep names (default: all)")
    ap.add_argument("--no-run", action="store_true", help="only render from existing results")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.sweeps_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(SWEEPS)
    unknown = [n for n in names if n not in SWEEPS]
    if unknown:
        ap.error(f"unknown sweeps {unknown}; choose from {list(SWEEPS)}")
    import json

    from kaft.cache import atomic_write_text

    tfile = out / "timings.json"  # wall seconds per sweep of the last run that ran it (read by --no-run too)
    timings = json.loads(tfile.read_text()) if tfile.exists() else {}
    t0 = time.time()
    if not args.no_run:
        for n in names:
            timings[n] = run_sweep(n, out, seeds, SWEEPS[n][1])
            atomic_write_text(tfile, json.dumps(timings, indent=1))
            print(f"[report] {n}: {timings[n] / 60:.1f} min", flush=True)
    timings = {n: timings[n] for n in SWEEPS if n in timings}
    cache_dir = os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft")
    models = testbed_models(seeds, cache_dir)
    report = Path(args.out)
    atomic_write_text(report, render(out, seeds, timings, report, models))
    print(f"[report] wrote {report} ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
