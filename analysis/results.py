"""Every ``results.json`` under a directory (runs, sweeps, several sweeps) as one flat table.

``python -m analysis.results multirun/ [--csv out.csv]`` prints one row per job: the swept settings, per-benchmark
accuracy, average, Δ vs base, conflict-score statistics and timings — the raw material for the paper's tables
(``python -m analysis.table`` lays them out as the paper does, ``python -m analysis.figures`` draws its figures).
The rows are :func:`kaft.results.sweep_frame`'s: kaft's results contract decides what a job is and how it reads.
``--csv FILE`` writes a new file or replaces one this tool wrote; any other file is refused in one ``kaft: error:``
line, nothing written (the rule of :mod:`kaft.outputs`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kaft.results import sweep_frame


def collect(root: str | Path) -> list[dict]:
    """The table as one dict per job (None where a job lacks a column)."""
    frame = sweep_frame(root)
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a run dir, a sweep dir, or a folder of sweeps")
    ap.add_argument("--csv", help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    from kaft.outputs import OutputError, check_target, write_text

    try:
        if args.csv:
            check_target(args.csv, "analysis.results")
    except OutputError as e:
        print(f"kaft: error: {e}", file=sys.stderr)
        return 2
    frame = sweep_frame(args.root)
    if frame.empty:
        print(f"no results.json under {args.root}", file=sys.stderr)
        return 1
    text = frame.to_csv(index=False, lineterminator="\n")
    print(text, end="")
    if args.csv:
        write_text(args.csv, text, "analysis.results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
