"""Ren et al.'s Exp-IV across the jobs of a sweep: does accuracy after fine-tuning rise with how consistent the tuned
model's knowledge stays with the base model's, once the base model's own accuracy is controlled for?

Ren et al. §7 / Table 3: per job, the mean over items of the correlation between the base model's ICL ranking of the
options and the tuned model's zero-shot ranking (kaft's diagnosis stage: ``diagnosis.ren.consistency_mean``, with
``diagnosis.enabled=true``); across jobs, the Spearman partial correlation of each benchmark's accuracy with that
consistency, controlling for the base model's accuracy on the benchmark (their 96 models; Table 3 gives r and
p-value). kaft's reading: the consistency is measured on the job's *training* items (what the diagnosis stage
re-answers), where Ren measure it on each test set; so one consistency per job stands against every benchmark.

``python -m analysis.ren_consistency <sweep or run dirs>...`` prints the Table 3 layout (benchmark, jobs, r, p).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from kaft.results import dig, read_results, result_dirs


@dataclass(frozen=True)
class Partial:
    r: float
    p: float
    n: int


def _residuals(y: Sequence[float], z: Sequence[float]) -> list[float]:
    """y minus its least-squares line on z (y itself, centred, when z is constant)."""
    n = len(y)
    my, mz = sum(y) / n, sum(z) / n
    szz = sum((b - mz) ** 2 for b in z)
    slope = sum((a - my) * (b - mz) for a, b in zip(y, z)) / szz if szz > 0 else 0.0
    return [a - my - slope * (b - mz) for a, b in zip(y, z)]


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> Partial:
    """The Spearman partial correlation of x and y controlling for z: the Pearson correlation of the residuals of
    rank(x) and rank(y) after a linear fit on rank(z) (ties share their mean rank), its two-sided p-value from
    Student's t with n - 3 degrees of freedom (one control variable)."""
    n = len(x)
    if not n == len(y) == len(z) or n < 4:
        raise ValueError(f"a partial correlation needs x, y, z of one length >= 4, got {len(x)}, {len(y)}, {len(z)}")
    rx, ry, rz = (list(stats.rankdata(v)) for v in (x, y, z))
    ex, ey = _residuals(rx, rz), _residuals(ry, rz)
    sxx, syy = sum(a * a for a in ex), sum(b * b for b in ey)
    if sxx == 0 or syy == 0:
        return Partial(math.nan, math.nan, n)
    r = max(-1.0, min(1.0, sum(a * b for a, b in zip(ex, ey)) / math.sqrt(sxx * syy)))
    dof = n - 3
    if abs(r) == 1.0:
        return Partial(r, 0.0, n)
    t = r * math.sqrt(dof / (1 - r * r))
    return Partial(r, float(2 * stats.t.sf(abs(t), dof)), n)


def job_rows(roots: Sequence[str | Path]) -> list[dict]:
    """One row per finished job with a diagnosis: its consistency and, per benchmark, tuned and base accuracy."""
    rows = []
    for root in roots:
        for job_dir in result_dirs(root):
            res = read_results(job_dir)
            cons = dig(res or {}, ("diagnosis", "ren", "consistency_mean"))
            if not res or res.get("status") != "done" or cons is None or not res.get("base_metrics"):
                continue
            accs = {
                b: (r["acc"], res["base_metrics"]["benchmarks"][b]["acc"])
                for b, r in res["metrics"]["benchmarks"].items()
                if b in res["base_metrics"]["benchmarks"]
            }
            rows.append({"job_dir": str(job_dir), "consistency": float(cons), "accs": accs})
    return rows


def table(rows: Sequence[dict]) -> str:
    """Ren et al. Table 3's layout: per benchmark, the partial correlation over the jobs and its p-value."""
    lines = ["| Benchmark | jobs | r | p-value |", "|---|---|---|---|"]
    benches = sorted({b for r in rows for b in r["accs"]})
    for b in benches:
        have = [r for r in rows if b in r["accs"]]
        if len(have) < 4:
            lines.append(f"| {b} | {len(have)} | n/a (fewer than 4 jobs) | |")
            continue
        pc = partial_spearman(
            [r["consistency"] for r in have], [r["accs"][b][0] for r in have], [r["accs"][b][1] for r in have]
        )
        lines.append(f"| {b} | {pc.n} | {pc.r:.2f} | {pc.p:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="sweep or run directories whose jobs ran with diagnosis.enabled=true")
    args = ap.parse_args(argv)
    rows = job_rows(args.roots)
    if not rows:
        print("no finished job with a diagnosis block (run with diagnosis.enabled=true) under", *args.roots)
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
