"""Collect every ``results.json`` under a directory (runs, sweeps, several sweeps) into one flat table.

``python -m analysis.results multirun/ [--csv out.csv]`` prints one row per job: the swept settings, per-benchmark
accuracy, average, Δ vs base, conflict-score statistics and timings — the raw material for the paper's tables
(``python -m analysis.table`` lays them out as the paper does, ``python -m analysis.figures`` draws its figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable

KEYS = {  # column -> path into results.json
    "loss": ("config", "loss", "name"),
    "alpha": ("config", "loss", "alpha"),        # what the loss used (each loss resolves its own default)
    "beta": ("config", "loss", "beta"),
    "eaft_alpha": ("config", "loss", "eaft_alpha"),
    "partition": ("config", "partition", "k"),
    "seed": ("config", "seed"),
    "model": ("config", "model", "name"),
    "dataset": ("config", "dataset", "name"),
    "average": ("metrics", "average"),
    "base_average": ("base_metrics", "average"),
    "delta_vs_base": ("delta_vs_base",),
    "score_mean": ("detection", "mean"),
    "auroc_contradict": ("detection", "auroc_contradict"),
    "status": ("status",),
    "method": ("config", "method"),
    "strategy": ("config", "strategy", "name"),
    "subset": ("config", "strategy", "subset"),
    "ratio": ("config", "strategy", "ratio"),
    "data_seed": ("config", "strategy", "data_seed"),
    "detection": ("config", "detection", "name"),
    "score_std": ("detection", "std"),
}


def _dig(obj, path):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def flatten(res: dict) -> dict:
    """One flat row of a results.json: the KEYS columns, acc/<benchmark>, time/<stage>."""
    row = {col: _dig(res, path) for col, path in KEYS.items()}
    for col in ("alpha", "beta"):  # results written before each loss resolved its own alpha / beta
        if row[col] is None:
            row[col] = _dig(res, ("config", col))
    if isinstance(row["method"], dict):  # a method group config, if one is ever stored as a mapping
        row["method"] = row["method"].get("name")
    for name, r in (_dig(res, ("metrics", "benchmarks")) or {}).items():
        row[f"acc/{name}"] = r.get("acc")
    for stage, sec in (res.get("timings") or {}).items():
        row[f"time/{stage}"] = sec
    row["run_dir"] = _dig(res, ("job", "run_dir"))
    return row


def collect(root: str | Path) -> list[dict]:
    rows = []
    for p in sorted(Path(root).rglob("results.json")):
        try:
            rows.append(flatten(json.loads(p.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as e:
            print(f"skipping {p}: {e}", file=sys.stderr)
    return rows


def to_csv(rows: Iterable[dict]) -> str:
    import csv
    import io

    rows = list(rows)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a run dir, a sweep dir, or a folder of sweeps")
    ap.add_argument("--csv", help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        print(f"no results.json under {args.root}", file=sys.stderr)
        return 1
    text = to_csv(rows)
    print(text, end="")
    if args.csv:
        Path(args.csv).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
