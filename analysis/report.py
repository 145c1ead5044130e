"""The testbed reproduction report: ``python -m analysis.report [--seeds 0,1,2] [--out analysis/REPORT.md]``.

Runs the KaFT paper's sweeps (``sweeps/``) on the embedded testbed over several seeds, then writes a Markdown report:
the answers to the paper's main questions computed from the results (mean ± std over seeds), one table per sweep in
the paper's layout (:mod:`analysis.table`) and the paper's figures (:mod:`analysis.figures`). Finished jobs are
skipped on a re-run (run directories are derived from the overrides), so an interrupted report resumes;
``--only`` runs a subset of the sweeps and ``--no-run`` only re-renders from existing results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# sweep -> (paper table for analysis.table, extra overrides)
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


# ----------------------------------------------------------------------------------------------- running
def run_sweep(name: str, out: Path, seeds: list[int], extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "kaft.run", "-m", f"+sweeps={name}", f"seed={','.join(map(str, seeds))}",
           "logger=none", "progress=false", f"hydra.sweep.dir={out / name}", *extra]
    t0 = time.time()
    print(f"[report] {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / f"{name}.log").write_text(proc.stdout[-200_000:] + proc.stderr[-200_000:])
    if proc.returncode not in (0, 1):  # 1 = some jobs failed (recorded in their results.json)
        raise SystemExit(f"[report] sweep {name} failed (exit {proc.returncode}); see {out / (name + '.log')}")
    return time.time() - t0


# ----------------------------------------------------------------------------------------------- numbers
def load(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]


def _row_of(r: dict) -> str:
    c = r["config"]
    if c.get("method"):
        return str(c["method"])
    strat = c.get("strategy", {}).get("name", "full")
    return {"none": "base", "full": c["loss"]["name"]}.get(strat, strat)


def group(results: list[dict], key) -> dict:
    """{key(r): [average accuracy per seed]} over finished jobs."""
    out: dict = {}
    for r in results:
        if r.get("status") == "done":
            out.setdefault(key(r), []).append(r["metrics"]["average"])
    return out


def ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def findings(out: Path) -> list[tuple[str, str, str, str]]:
    """(question, paper, testbed numbers, verdict) for the paper's headline claims, computed from results."""
    rows = []
    main = group(load(out / "table6_halueval"), lambda r: r["config"].get("method") or _row_of(r))
    if main:
        base, wrong, van, noc, kaft = (main.get(k, []) for k in ("base", "wrong_only", "vanilla", "no_conflict",
                                                                 "kaft"))
        rows.append(("Does training on the wrong subset alone collapse the model?",
                     "yes: wrong-only is far below base (Table 6, −2.8 to −9.2)",
                     f"base {ms(base)}, wrong-only {ms(wrong)}",
                     "yes" if mean(wrong) < mean(base) - 0.05 else "no"))
        rows.append(("Does KaFT beat vanilla SFT and no-conflict?", "yes (Tables 2/3)",
                     f"vanilla {ms(van)}, no-conflict {ms(noc)}, KaFT {ms(kaft)}, self-align {ms(main.get('self_align', []))}",
                     "yes" if mean(kaft) > max(mean(van), mean(noc)) else "no"))
    rew = group(load(out / "table12_rewards"), lambda r: r["config"]["loss"]["name"])
    if rew:
        c, a, k = (rew.get(n, []) for n in ("constant", "auto_adapt", "kaft"))
        rows.append(("Is constant < auto-adapt ≤ KaFT?", "yes (Table 12)",
                     f"constant {ms(c)}, auto-adapt {ms(a)}, KaFT {ms(k)}",
                     "yes" if mean(c) < mean(a) <= mean(k) else
                     ("partly" if mean(c) < max(mean(a), mean(k)) else "no")))
    ab = group(load(out / "table13_alpha_beta"), lambda r: float(r["config"]["alpha"]))
    if ab:
        xs = sorted(ab)
        means = [mean(ab[x]) for x in xs]
        falls = all(b <= a + 1e-9 for a, b in zip(means, means[1:]))
        rows.append(("Does accuracy fall as α rises?", "yes: a continuous decline (Fig. 4)",
                     ", ".join(f"α={x:g}: {ms(ab[x])}" for x in xs) + " (mean over β)",
                     "yes" if falls else ("partly" if means[-1] < means[0] else "no")))
    det = load(out / "table4_detection")
    if det:
        wo = group([r for r in det if (r["config"].get("method") == "wrong_only")],
                   lambda r: r["config"]["detection"]["name"] + ("" if r["config"]["detection"].get(
                       "diverse_query", True) else "/no_dq") + ("" if r["config"]["detection"].get(
                       "response_sampling", True) else "/no_rs"))
        rnd = group([r for r in det if r["config"].get("method") == "random_subset"], lambda r: "random")
        div, icl = wo.get("diversified", []), wo.get("icl", [])
        rows.append(("Does diversified detection pick a more harmful wrong set than ICL?",
                     "yes: training on its wrong set hurts most (Tables 4/11)",
                     ", ".join(f"{k} {ms(v)}" for k, v in sorted(wo.items())) + f", random {ms(rnd.get('random', []))}",
                     "yes" if mean(div) < mean(icl) else "no"))
    return rows


# ----------------------------------------------------------------------------------------------- rendering
def render(out: Path, seeds: list[int], timings: dict, report: Path) -> str:
    lines = ["# kaft testbed reproduction report", "",
             f"Generated by `python -m analysis.report --seeds {','.join(map(str, seeds))}` "
             f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
             f"sweep results in `{out}`). Every number below is computed from the sweeps' results.json files: "
             f"mean ± std over {len(seeds)} seeds of the average zero-shot accuracy (%) on the testbed benchmarks "
             f"(testbed_id: held-out facts of the training relations; testbed_ood: other relations).", ""]
    if timings:
        total = sum(timings.values())
        lines += [f"Wall time of the sweeps: {total / 60:.1f} min (" +
                  ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items()) + ").", ""]
    lines += ["## The paper's claims on the testbed", "", "| question | paper | testbed | holds? |", "|---|---|---|---|"]
    lines += [f"| {q} | {p} | {t} | {v} |" for q, p, t, v in findings(out)]
    lines += ["", "## Tables", ""]
    try:
        from analysis import table as table_mod
    except ImportError:  # pragma: no cover
        table_mod = None
    for name, (tab, _) in SWEEPS.items():
        d = out / name
        if not d.exists():
            continue
        lines += [f"### `{name}` (paper table {tab})", ""]
        if table_mod is not None:
            try:
                lines += [table_mod.render(table_mod.build_table(table_mod.collect_runs(d), tab), "md"), ""]
                continue
            except Exception as e:  # noqa: BLE001 - fall back to the raw numbers
                lines += [f"(analysis.table could not lay this out: {e})", ""]
        rows = group(load(d), _row_of)
        lines += ["| row | average |", "|---|---|"] + [f"| {k} | {ms(v)} |" for k, v in rows.items()] + [""]
    figs = report.parent / "figures"
    try:
        from analysis import figures as fig_mod

        from analysis import table as T

        made = []
        for fid, sweep in (("2a", "table6_halueval"), ("2b", "table9_subsets"), ("2c", "table10_wrong_ratio"),
                           ("3", "table12_rewards"), ("4", "table13_alpha_beta")):
            if (out / sweep).exists():
                made += fig_mod.make_figure(T.collect_runs(out / sweep), fid, figs)
        lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in made if p.suffix == ".png"] + [""]
    except Exception as e:  # noqa: BLE001
        lines += [f"(figures not drawn: {e})", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
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
    timings = {}
    if not args.no_run:
        for n in names:
            timings[n] = run_sweep(n, out, seeds, SWEEPS[n][1])
            print(f"[report] {n}: {timings[n] / 60:.1f} min", flush=True)
    report = Path(args.out)
    from kaft.cache import atomic_write_text

    atomic_write_text(report, render(out, seeds, timings, report))
    print(f"[report] wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
