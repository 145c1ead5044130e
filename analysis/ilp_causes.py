"""ILP's App. Table 10 from a sweep's ``results.json`` files: the share of unlearned training items attributed to each
of the five causes (seeds/002 Fig. 3, App. Table 10), ours beside the paper's.

``python -m analysis.ilp_causes SWEEP_DIR [--format md|csv]`` reads every job's ``diagnosis.causes`` block (written
by :func:`kaft.diagnosis.causes.causes_block`), and prints one row per cause in ILP's order (types I-V) plus
``unattributed`` (unlearned items no test claimed; ILP's five shares sum to 78.0 %, so the paper leaves a rest too):
our share (% of the job's unlearned items, mean ± sample std over the jobs that have one), n (jobs), ILP's share
(``paper_numbers.yaml``, family ``ilp``) and -- on the testbed, where every cause is planted -- the attribution's
mean precision and recall against the planted causes (%). Jobs without a diagnosis are skipped.

Not an :class:`analysis.layouts.Layout`: those lay out *jobs* as rows over benchmark columns; this table's rows are
the causes of *one* job's items, so it has its own small reader and uses the same markdown renderer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.paper import PAPER_FILE
from analysis.render import markdown

ORDER = ("missing_knowledge", "pretraining_conflict", "internal_conflict", "forgetting", "insufficient_optimisation")
UNATTRIBUTED = "unattributed"


def paper_table10(path: str | Path = PAPER_FILE) -> dict[str, dict]:
    """ILP Table 10 as ``{cause: {label, description, proportion (%)}}``."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    t = next((t for t in data.get("ilp") or [] if t.get("table") == 10), None)
    return dict((t or {}).get("rows") or {})


def job_causes(res: dict | None) -> dict | None:
    """A results.json's ``diagnosis.causes`` block, or ``None``."""
    block = ((res or {}).get("diagnosis") or {}).get("causes")
    return block if isinstance(block, dict) and block.get("counts") is not None else None


def _stats(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _pct(x):
    return None if x is None else 100 * x


def table10_frame(blocks: Sequence[dict], paper: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per cause (ILP's order, then ``unattributed``): label, ours, ours_std, n, paper, precision, recall."""
    paper = paper_table10() if paper is None else paper
    rows = []
    for cause in (*ORDER, UNATTRIBUTED):
        shares = [_pct(b["counts"].get(cause, 0) / b["unlearned"]) for b in blocks if b.get("unlearned")]
        mean, std = _stats(shares)
        prs = [(b.get("precision_recall") or {}).get(cause) or {} for b in blocks]
        rows.append(
            {
                "cause": cause,
                "label": (paper.get(cause) or {}).get("label", "Unattributed" if cause == UNATTRIBUTED else cause),
                "ours": mean,
                "ours_std": std,
                "n": len(shares),
                "paper": (paper.get(cause) or {}).get("proportion"),
                "precision": _stats([_pct(p.get("precision")) for p in prs])[0],
                "recall": _stats([_pct(p.get("recall")) for p in prs])[0],
                "not_applicable": "; ".join(
                    sorted({b["not_applicable"][cause] for b in blocks if cause in (b.get("not_applicable") or {})})
                ),
            }  # fmt: skip
        )
    return pd.DataFrame(rows)


def _f(v, std=None) -> str:
    if v is None or v != v:
        return "–"
    return f"{v:.1f}" + (f" ± {std:.1f}" if std is not None and std == std else "")


def render(frame: pd.DataFrame, fmt: str = "md") -> str:
    """The table as markdown (a cause that did not apply says why) or CSV."""
    if fmt == "csv":
        return frame.to_csv(index=False, lineterminator="\n")
    header = ["Type (ILP Table 10)", "Ours (% of unlearned)", "n", "ILP (%)", "Precision (%)", "Recall (%)"]
    body = [
        [
            r["label"] + (f" (not applicable: {r['not_applicable']})" if r["not_applicable"] else ""),
            _f(r["ours"], r["ours_std"]),
            str(r["n"]),
            _f(r["paper"]),
            _f(r["precision"]),
            _f(r["recall"]),
        ]
        for r in frame.to_dict("records")
    ]
    return markdown(header, body)


def collect_blocks(root: str | Path) -> list[dict]:
    """The ``diagnosis.causes`` blocks of every results.json under ``root``."""
    from kaft.results import load_results, result_dirs

    return [b for d in result_dirs(root) if (b := job_causes(load_results(d)[0])) is not None]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a run dir, a sweep dir, or a folder of sweeps")
    ap.add_argument("--format", choices=("md", "csv"), default="md")
    args = ap.parse_args(argv)
    blocks = collect_blocks(args.root)
    if not blocks:
        print(f"no results.json with a diagnosis.causes block under {args.root}", file=sys.stderr)
        return 1
    print(render(table10_frame(blocks), args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
