"""The testbed reproduction report: ``python -m analysis.report [--seeds 0,1,2,3,4] [--out analysis/REPORT.md]``.

Runs the KaFT paper's sweeps (``sweeps/``) on the embedded testbed over several seeds - on the testbed a seed is a
whole replicate: its own world, pretrained model, probing and fine-tuning - then writes a Markdown report: the
testbed models themselves, the paper's claims checked against the results (paired over seeds: the mean difference
with a 95 % t interval and a three-way verdict, :mod:`analysis.stats`; the claims themselves are data in
:data:`analysis.claims.CLAIMS`), one table per sweep in the paper's layout
(:mod:`analysis.table`) and the paper's figures (:mod:`analysis.figures`). Every number in the report is computed
from the sweeps' ``results.json`` files and the cached testbed models, and explanatory text is worded by the
computed intervals; nothing is typed in.

Finished jobs are skipped on a re-run (run directories are derived from the overrides), so an interrupted report
resumes where it stopped; ``--only`` runs some of the sweeps, ``--no-run`` only re-renders from existing results.
``--out`` is replaced only when it is a report this tool wrote (its first line, or the record of :mod:`kaft.outputs`);
any other file there is refused in one ``kaft: error:`` line before a sweep runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from analysis import stats as S
from analysis import table as T
from analysis.claims import ADDING_WRONG, KAFT_VS_NO_CONFLICT, Finding, alpha_beta_grid, ms, paired, sweep_rows
from analysis.claims import findings as _findings
from analysis.jobs import jobs_frame
from analysis.testbed_section import n_contradict, probes, testbed_models, testbed_section, wrong_subset_share
from kaft.testbed.cpu import describe_cpu

ROOT = Path(__file__).resolve().parents[1]

# sweep -> (paper table for analysis.table, extra overrides). Order: the main comparison first (its jobs are
# reused by the others through the cache).
SWEEPS: dict[str, tuple[str, list[str]]] = {
    "table6_halueval": ("2", []),  # base, wrong-only, vanilla, no-conflict, self-aligning, KaFT
    "table12_rewards": ("12", []),
    "table13_alpha_beta": ("13", []),
    "table4_detection": ("4", []),
    "table9_subsets": ("9", []),
    "table10_wrong_ratio": ("10", []),
    "table5_partitions": ("5", []),
    "losses": ("losses", []),
    "ren_har_inc_self": ("ren", []),
    "responses": ("responses", []),  # issue 21: free-form training; its own file (--only responses --section)
}
# sweeps a full report leaves out: each is its own report (``--only NAME --section --out FILE``)
OWN_FILE = ("responses",)
FIGURES = (
    ("2a", "table6_halueval"),
    ("2b", "table9_subsets"),
    ("2c", "table10_wrong_ratio"),
    ("3", "table12_rewards"),
    ("4", "table13_alpha_beta"),
)

REPORT_HEADER = "# kaft testbed reproduction report"  #: its first line, what marks a report this tool wrote


def run_sweep(name: str, out: Path, seeds: list[int], extra: list[str]) -> float:
    """One multirun of ``sweeps/<name>.yaml`` over ``seeds`` (one process, Hydra's basic launcher)."""
    cmd = [
        sys.executable,
        "-m",
        "kaft.run",
        "-m",
        f"+sweeps={name}",
        f"seed={','.join(map(str, seeds))}",
        "logger=none",
        "progress=false",
        f"hydra.sweep.dir={out / name}",
        *extra,
    ]
    t0 = time.time()
    print(f"[report] {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    from kaft.cache import atomic_write_text

    atomic_write_text(out / f"{name}.log", proc.stdout[-200_000:] + proc.stderr[-200_000:])
    if proc.returncode not in (0, 1):  # 1 = some jobs failed (recorded in their results.json)
        raise SystemExit(f"[report] sweep {name} failed (exit {proc.returncode}); see {out / (name + '.log')}")
    return time.time() - t0


def findings(out: Path, names: Sequence[str] | None = None) -> list[Finding]:
    """The paper's claims (:data:`analysis.claims.CLAIMS`), each a paired difference over seeds with its interval
    and verdict, from the report's sweeps under ``out`` (``names``: those sweeps' claims only)."""
    return _findings(out, {name: table for name, (table, _) in SWEEPS.items() if names is None or name in names})


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
    grid, alphas, _ = alpha_beta_grid(sweep_rows(out, "table13_alpha_beta", SWEEPS["table13_alpha_beta"][0]) or {})
    if not alphas:
        return []
    a = 0.1 if 0.1 in grid else alphas[0]
    betas = sorted(grid[a])
    out_ = []
    for lo, hi in zip(betas, betas[1:]):
        iv = S.t_interval(paired(grid[a][hi], grid[a][lo]))
        if iv is not None:
            word = S.effect(iv, "raises", "lowers", "does not resolvably change")
            out_.append(
                f"at α = {a:g}, raising β (the might-wrong subset's reward) from {lo:g} to {hi:g} {word} "
                f"accuracy ({iv.text()} points)"
            )
    return out_


def why_not_above_no_conflict(rows: Sequence[Finding], out: Path, n_contradict: dict[str, int]) -> list[str]:
    """Where KaFT is not shown above no-conflict: the testbed's numbers that bear on the paper's reason for the
    margin (conflicting data still teaches something), each worded by its own interval - no hand-written cause."""
    f = next((r for r in rows if r.claim == KAFT_VS_NO_CONFLICT), None)
    if f is None or not f.diffs or f.verdict == "reproduced":
        return []
    facts = []
    recall, precision = wrong_subset_share(probes(out), n_contradict)
    if recall:
        facts.append(
            f"diversified probing's wrong subset holds {ms(recall)} % of the planted contradictions "
            f"(recall); "
            + (
                f"{ms(precision)} % of its items are contradictions (precision)"
                if precision
                else "its precision is not known (no count of contradicting items)"
            )
        )
    lam = next((r for r in rows if r.claim == ADDING_WRONG), None)
    if lam is not None and lam.diffs:
        facts.append(
            "adding wrong data to the no-conflict set (λ = 0 → 25 %) "
            + S.effect(lam.interval, "raises", "lowers", "does not resolvably change")
            + f" accuracy ({lam.difference()} points)"
        )
    facts += _beta_steps(out)
    if not facts:
        return []
    return [
        "",
        f"KaFT − no-conflict is {f.verdict} here ({f.difference()} points). The paper credits its margin to "
        "conflicting data that still teaches something; the testbed's numbers on that (each verb follows its "
        "95 % interval):",
        "",
    ] + [f"- {x}." for x in facts]


# ----------------------------------------------------------------------------------------------- rendering
def claims_table(rows: Sequence[Finding]) -> list[str]:
    """The claims as paired differences: mean ± half-width [low, high] of the 95 % t interval over seeds."""
    if not rows:
        return ["## The paper's claims on the testbed", ""]
    return (
        [
            "## The paper's claims on the testbed",
            "",
            "Each claim is a difference between two rows, paired on every seed (the same world, model and "
            "probing): its mean over seeds ± the half-width of a 95 % Student-t interval [low, high], in points. "
            "*reproduced*: the interval lies wholly on the paper's side of its threshold; *contradicted*: wholly on "
            "the other side; *not resolved*: it contains the threshold. Orderings of more than two rows are checked "
            "pair by pair.",
            "",
            "| claim | paper's direction | testbed (mean ± std) | paired difference | seeds | verdict |",
            "|---|---|---|---|---:|---|",
        ]
        + [f"| {f.claim} | {f.paper} | {f.testbed} | {f.difference()} | {len(f.diffs)} | {f.verdict} |" for f in rows]
        + [""]
    )


def render(out: Path, seeds: list[int], timings: dict, report: Path, models: Sequence[dict] = ()) -> str:
    lines = [
        REPORT_HEADER,
        "",
        f"Generated by `python -m analysis.report --seeds {','.join(map(str, seeds))}` "
        f"({time.strftime('%Y-%m-%d')}, {describe_cpu()}; sweep results in "
        f"`{_rel(out)}`). Every number below is computed from the sweeps' results.json files: the average "
        f"zero-shot accuracy (%) over the two testbed benchmarks (testbed_id: held-out facts of the training "
        f"relations; testbed_ood: facts of other relations), mean ± std over {len(seeds)} seeds, each seed a "
        f"world and model of its own.",
        "",
    ]
    timings = {k: v for k, v in timings.items() if k not in OWN_FILE}
    if timings:
        total = sum(timings.values())
        lines += [
            f"Wall time of the sweeps: {total / 60:.1f} min ("
            + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())
            + ").",
            "",
        ]
    rows = findings(out, [n for n in SWEEPS if n not in OWN_FILE])
    lines += claims_table(rows) + disagreements(rows, out, n_contradict(models))
    lines += testbed_section(models, out) + tables_and_figures(out, report.parent / "figures")
    return "\n".join(lines) + "\n"


def render_section(out: Path, seeds: list[int], timings: dict, names: Sequence[str], command: str) -> str:
    """A report of ``names`` only (``--section``): its header (the command, CPU, torch, date), their claims and
    their tables, without the other sweeps, the testbed models or the figures."""
    from analysis.claims import SECTION_NOTES

    lines = [
        REPORT_HEADER,
        "",
        f"Sweeps {', '.join(f'`sweeps/{n}.yaml`' for n in names)} only. Generated by `{command}` "
        f"({time.strftime('%Y-%m-%d')}, {describe_cpu()}; sweep results in `{_rel(out)}`). Every number below is "
        f"computed from the sweeps' results.json files, mean ± std over {len(seeds)} seeds, each seed a world and "
        "model of its own.",
        "",
    ]
    spent = {n: timings[n] for n in names if n in timings}
    if spent:
        lines += [f"Wall time of the sweeps: {', '.join(f'{k} {v / 60:.1f} min' for k, v in spent.items())}.", ""]
    rows = findings(out, names)
    lines += claims_table(rows) + disagreements(rows, out)
    lines += [x for n in names for x in SECTION_NOTES.get(n, ())]
    return "\n".join(lines + tables_and_figures(out, None, names)) + "\n"


def tables_and_figures(out: Path, figs: Path | None, names: Sequence[str] | None = None) -> list[str]:
    """One table per sweep (of ``names``; default all but :data:`OWN_FILE`) in its paper layout, then the paper's
    figures (drawn into ``figs``; None: none)."""
    from analysis import figures as F

    lines = ["## Tables", ""]
    for name in names or [n for n in SWEEPS if n not in OWN_FILE]:
        tab = SWEEPS[name][0]
        jobs = jobs_frame(out / name) if (out / name).exists() else None
        if jobs is not None and not jobs.empty:
            lines += [f"### `sweeps/{name}.yaml`", "", T.render(T.build_table(jobs, tab), "md").strip(), ""]
    made = []
    for fid, sweep in FIGURES if figs is not None else ():
        if (out / sweep).exists():
            try:
                made += F.make_figure(jobs_frame(out / sweep), fid, figs)
            except ValueError as e:
                lines.append(f"(figure {fid} not drawn: {e})")
    if made:
        lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in made if p.suffix == ".png"] + [""]
    return lines


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
    ap.add_argument("--section", action="store_true", help="render only the --only sweeps (claims, tables)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    from kaft.outputs import OutputError, check_target, write_text

    try:
        check_target(args.out, "analysis.report", legacy_header=REPORT_HEADER)
    except OutputError as e:
        print(f"kaft: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.sweeps_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else [n for n in SWEEPS if n not in OWN_FILE]
    unknown = [n for n in names if n not in SWEEPS]
    if unknown:
        ap.error(f"unknown sweeps {unknown}; choose from {list(SWEEPS)}")
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
    report = Path(args.out)
    if args.section:
        command = "python -m analysis.report " + " ".join(sys.argv[1:] if argv is None else argv)
        text = render_section(out, seeds, timings, names, command)
    else:
        text = render(out, seeds, timings, report, testbed_models(seeds, cache_dir))
    write_text(report, text, "analysis.report", legacy_header=REPORT_HEADER)
    print(f"[report] wrote {report} ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
