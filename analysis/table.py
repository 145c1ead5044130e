"""The KaFT paper's tables from a sweep's ``results.json`` files, with the paper's own numbers beside ours.

``python -m analysis.table SWEEP_DIR --table {2,3,4,5,6,7,9,10,11,12,13,14,losses,ren,auto} [--format md|latex|csv]
[--out FILE]`` reads every job under SWEEP_DIR (:func:`analysis.jobs.jobs_frame`), groups the jobs by (model,
dataset), puts each job in a row of the chosen :class:`analysis.layouts.Layout` (the paper's method / subset / ratio
/ loss / detector / partition / α-β) and prints one table per (model, dataset): rows in the paper's order, columns =
benchmarks + Avg. + Δ vs base + n (accuracy in %). Several seeds (and, for Table 10, data seeds) of a row give mean
± std (sample std) over them. Where the paper reports the same model on the same data, a "↳ paper" row follows each
of ours with the published numbers (:mod:`analysis.paper`). Failed jobs show as "failed".

Layouts (:data:`analysis.layouts.LAYOUTS`): 2/3/6/7/14 = main comparison; 4/11 = detectors' wrong sets vs random;
5 = K subsets; 9 = one subset only; 10 = wrong ratio λ; 12 / losses = reward strategies / every loss; 13 = α × β
(the Fig. 4 heatmap matrix of Avg., then the long table); ren = Ren et al.'s HAR / INC / SELF. ``auto`` (default)
guesses the layout from what the sweep varies.

``--out FILE`` writes a new file or replaces one this tool wrote there before and nobody changed since; any other
existing file, a folder or a path below a regular file is refused in one ``kaft: error:`` line (the rule of
:mod:`kaft.outputs`, whose ``.kaft-written.json`` beside the file records what kaft wrote). The sweep-end hook's
``paper_table.md`` / ``.csv`` follow the same rule.

Python: :func:`build_table` (a list of :class:`Section`, each holding its rows as a DataFrame), :func:`render`,
:func:`flat_frame` / :func:`flat_rows`, :func:`log_table_to_wandb` and :func:`log_sweep_tables` (the
sweep-end hook, :mod:`analysis.callback`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.jobs import ACC, BASE_ACC, jobs_frame, num
from analysis.layouts import LAYOUTS, Layout, infer_layout, layout_of, table_choices
from analysis.paper import PAPER_FILE, load_paper, match_paper, table_ref
from analysis.render import grids, latex, markdown

VALUES = ("avg", "delta", "delta_vs_random")  # the value columns after the benchmarks


@dataclass
class Section:
    """One table: a (model, dataset) of a sweep in one layout. ``rows`` has one row per table row (ours, each
    followed by the paper's where it has one): id, label, source (ours | paper), status, n, n_failed, ref, note,
    alpha, beta, ratio, and per benchmark / value column ``c``: ``c`` (mean, %), ``c_std``, ``c_doubt``."""

    layout: str
    model: str
    dataset: str
    columns: list
    rows: pd.DataFrame
    paper_refs: list = field(default_factory=list)
    footnotes: list = field(default_factory=list)

    @property
    def spec(self) -> Layout:
        return LAYOUTS.get(self.layout)

    @property
    def title(self) -> str:
        refs = f" — paper: {', '.join(self.paper_refs)}" if self.paper_refs else ""
        return f"{self.spec.title}: model {self.model}, dataset {self.dataset}{refs}"

    def ours(self) -> pd.DataFrame:
        return self.rows[self.rows["source"] == "ours"]

    def paper_of(self) -> dict[str, dict]:
        """``{row id: the paper's row}`` for our rows that have one."""
        return {r["id"]: r for r in self.rows[self.rows["source"] == "paper"].to_dict("records")}


# ----------------------------------------------------------------------------------------------- aggregation
def _fmean(values) -> float | None:
    vals = [v for v in values if v is not None and v == v]
    return statistics.fmean(vals) if vals else None


def _cell(values) -> dict:
    """mean, sample std (None for one replicate) and n of the values that exist."""
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def replicate_key(jobs: pd.DataFrame) -> pd.Series:
    """A replicate is a (seed, data seed): jobs repeating one (the random subset, the same for every detector)
    are averaged into one."""
    return jobs["seed"].map(str) + "|" + jobs["data_seed"].map(str)


def replicates(jobs: pd.DataFrame, base: bool = False) -> pd.DataFrame:
    """One row per replicate: accuracy per benchmark (columns named without prefix), avg, delta (None for the base
    model's own evaluation)."""
    prefix = BASE_ACC if base else ACC
    cols = {c: c[len(prefix) :] for c in jobs.columns if c.startswith(prefix) and jobs[c].notna().any()}
    values = jobs[list(cols)].rename(columns=cols)
    values["avg"] = jobs["base_avg" if base else "avg"]
    values["delta"] = None if base else jobs["delta"]
    return values.groupby(replicate_key(jobs), sort=False).agg(_fmean)


def our_row(spec: Layout, key: str, jobs: pd.DataFrame, base_from: pd.DataFrame | None = None) -> dict:
    """Our row ``key``: mean ± std over its replicates; the base model's own evaluation (``base_metrics``) of
    ``base_from`` when the sweep has no base job."""
    ok = (jobs["status"] == "done") & jobs["avg"].notna()
    done, failed = jobs[ok], jobs[~ok]
    row = {
        "id": key,
        "label": spec.label(key),
        "source": "ours",
        "ref": "",
        "note": "",
        "ratio": num(key),
        "alpha": None,
        "beta": None,
    }
    if len(done):
        reps = replicates(done)
    elif base_from is not None and len(base_from):
        reps, row["note"] = replicates(base_from, base=True), "from base_metrics"
    else:
        reps = pd.DataFrame()
    row["n"], row["n_failed"] = len(reps), replicate_key(failed).nunique() if len(failed) else 0
    row["status"] = "failed" if not len(reps) and len(failed) else "partial" if len(failed) else "done"
    for col in reps.columns:
        if col == "delta" and key == "base":
            continue
        c = _cell(reps[col].tolist())
        if c["mean"] is not None:
            row[col], row[f"{col}_std"] = c["mean"], c["std"]
    first = next((f for f in (done, jobs, base_from) if f is not None and len(f)), None)
    if first is not None and spec.matrix and key.startswith("a") and "_b" in key:
        row["alpha"], row["beta"] = first["alpha"].iloc[0], first["beta"].iloc[0]
    return row


def paper_row(rec: dict, benches: Sequence[str]) -> dict:
    """The paper's numbers for one of our rows (doubtful ones flagged)."""
    doubt = rec["doubt_cols"]
    row = {
        "id": rec["row"],
        "label": f"↳ paper ({table_ref(rec['table'])})",
        "source": "paper",
        "status": "done",
        "ref": table_ref(rec["table"]),
        "note": "",
        "n": 0,
        "n_failed": 0,
    }
    for col, v in [*((b, rec["values"].get(b)) for b in benches), *((v, rec.get(v)) for v in VALUES)]:
        if v is not None:
            row[col], row[f"{col}_doubt"] = float(v), "*" in doubt or col in doubt
    if rec["delta_derived"]:
        row["note"] = f"Δ from {table_ref(rec['delta_derived'])} Base"
    return row


def _rows_of(spec: Layout, jobs: pd.DataFrame) -> list[dict]:
    """Our rows of one (model, dataset): jobs → row keys (the layout's rules, split by loss settings) → rows."""
    keys = spec.row_keys(jobs)
    for key in keys.unique():
        m = keys == key
        keys[m] = spec.split_by_settings(key, jobs[m])
    rows = [our_row(spec, k, jobs[keys == k]) for k in spec.ordered(keys)]
    if spec.base_from_metrics and "base" not in set(keys):
        with_base = jobs[(jobs["status"] == "done") & jobs["base_avg"].notna()]
        if len(with_base):
            rows.insert(0, our_row(spec, "base", jobs.iloc[:0], base_from=with_base))
    if spec.versus_random:
        rnd = next((r for r in rows if r["id"] == "random" and r.get("avg") is not None), None)
        for r in rows:
            if rnd is not None and r.get("avg") is not None and r is not rnd:
                r["delta_vs_random"] = r["avg"] - rnd["avg"]
    return rows


def _section(spec: Layout, model: str, dataset: str, jobs: pd.DataFrame, paper: Sequence[dict]) -> Section:
    ours = _rows_of(spec, jobs)
    skip = {"id", "label", "source", "ref", "note", "ratio", "alpha", "beta", "n", "n_failed", "status", *VALUES}
    benches = list(dict.fromkeys(c for r in ours for c in r if c not in skip and not c.endswith("_std")))
    matched = {r["id"]: match_paper(paper, spec.paper, model, dataset, r["id"], benches) for r in ours}
    first = next((m for m in matched.values() if m and m["columns"]), None)
    if first:  # the paper's column order, then ours that it lacks
        benches = [b for b in first["columns"] if b in benches] + [b for b in benches if b not in first["columns"]]
    rows, refs, notes = [], [], []
    for row in ours:
        rows.append(row)
        rec = matched.get(row["id"])
        if rec:
            rows.append(paper_row(rec, benches))
            refs.append(table_ref(rec["table"]))
            if rec["doubt"]:
                notes.append(f"† {table_ref(rec['table'])}: {rec['doubt']}")
            if rec["delta_derived"]:
                notes.append(
                    f"Paper Δ of {table_ref(rec['table'])} (which prints none) = its Avg. minus the same "
                    f"model's Base Avg. in {table_ref(rec['delta_derived'])}."
                )
    if any(r["note"] == "from base_metrics" for r in rows):
        notes.append(
            "Base: the base-model evaluation stored in the fine-tuned jobs' results.json (base_metrics); "
            "the sweep has no strategy=none job."
        )
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys(c for r in rows for c in r)), dtype=object)
    return Section(
        spec.name,
        model,
        dataset,
        benches,
        frame.where(frame.notna(), None),
        list(dict.fromkeys(refs)),
        list(dict.fromkeys(notes)),
    )


def build_table(jobs: pd.DataFrame, table: str = "auto", paper: Sequence[dict] | None = None) -> list[Section]:
    """One :class:`Section` per (model, dataset) of ``jobs`` (:func:`analysis.jobs.jobs_frame`), in the layout of
    paper table ``table`` (``auto``: guessed)."""
    if jobs.empty:
        return []
    spec = infer_layout(jobs) if table == "auto" else layout_of(table)
    paper = load_paper() if paper is None else paper
    return [
        _section(spec, model, dataset, group, paper)
        for (model, dataset), group in jobs.groupby(["model", "dataset"], sort=False)
    ]


# ----------------------------------------------------------------------------------------------- output
def flat_frame(sections: Sequence[Section]) -> pd.DataFrame:
    """One row per table row (ours and paper), numbers in % rounded to 4 places: what the CSV holds and W&B logs."""
    out = []
    for sec in sections:
        for row in sec.rows.to_dict("records"):
            ours = row["source"] == "ours"
            d = {
                "table": sec.layout,
                "model": sec.model,
                "dataset": sec.dataset,
                "row": row["id"],
                "label": row["label"],
                "source": row["source"],
                "paper_table": row["ref"],
                "status": row["status"],
                "n": row["n"] if ours else None,
                "n_failed": row["n_failed"] if ours else None,
            }
            for col in [*sec.columns, *VALUES[:2], *VALUES[2:] * sec.spec.versus_random]:
                for name in (col, f"{col}_std"):
                    d[name] = None if row.get(name) is None else round(row[name], 4)
            d["doubtful"] = any(row.get(f"{c}_doubt") is True for c in [*sec.columns, "avg", "delta"])
            if sec.spec.matrix:
                d["alpha"], d["beta"] = row.get("alpha"), row.get("beta")
            out.append(d)
    return pd.DataFrame(out, columns=list(dict.fromkeys(c for r in out for c in r)), dtype=object)


def flat_rows(sections: Sequence[Section]) -> list[dict]:
    """:func:`flat_frame` as dicts (None where a row has no value)."""
    frame = flat_frame(sections)
    return frame.where(frame.notna(), None).to_dict("records")


def render(sections: Sequence[Section], fmt: str = "md") -> str:
    """The table(s) as Markdown, LaTeX (booktabs) or CSV."""
    if fmt == "csv":
        return flat_frame(sections).to_csv(index=False, lineterminator="\n", na_rep="")
    parts = []
    for sec in sections:
        for sub, (header, body) in grids(sec):
            if fmt == "latex":
                parts.append(latex(header, body, sec.title + (f" — {sub}" if sub else "")))
            else:
                parts.append(f"### {sec.title}" + (f" — {sub}" if sub else "") + "\n\n" + markdown(header, body))
        if sec.footnotes:
            parts.append("\n".join(("% " if fmt == "latex" else "- ") + n for n in sec.footnotes))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------- W&B
def log_table_to_wandb(rows: Sequence[dict] | Sequence[Section], name: str, run=None, init: dict | None = None):
    """Log ``rows`` (:func:`flat_rows` dicts, or :class:`Section` s) as a ``wandb.Table`` under the key ``name``.

    Logs to ``run``, else to the active ``wandb.run``, else to a new run ``wandb.init(**init)`` (job_type "table";
    mode offline unless ``init["mode"]`` / WANDB_MODE / WANDB_API_KEY say otherwise), which it finishes afterwards.
    Returns the ``wandb.Table``.
    """
    import wandb

    from kaft.track import resolve_mode

    rows = list(rows)
    if rows and isinstance(rows[0], Section):
        rows = flat_rows(rows)
    cols = list(dict.fromkeys(c for r in rows for c in r)) or ["empty"]
    table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
    own = run is None and wandb.run is None
    if run is None:
        run = wandb.run
    if own:
        kw = {"job_type": "table", **(init or {})}
        kw["mode"] = resolve_mode(kw.get("mode"))
        kw.setdefault(
            "settings",
            wandb.Settings(
                console="off", quiet=True, silent=True, x_disable_stats=True, disable_git=True, save_code=False
            ),
        )
        if kw.get("dir"):
            Path(kw["dir"]).mkdir(parents=True, exist_ok=True)
        run = wandb.init(**kw)
    try:
        run.log({name: table})
        run.summary[f"{name}_rows"] = len(rows)
    finally:
        if own:
            run.finish()
    return table


def log_sweep_tables(
    sweep_dir: str | os.PathLike,
    table: str = "auto",
    logger_cfg: dict | None = None,
    run=None,
    write_files: bool = True,
) -> list[Section]:
    """The sweep-end hook: build the paper table of ``sweep_dir`` (layout guessed from the jobs unless given), write
    ``paper_table.md`` / ``paper_table.csv`` into the sweep dir, and log it to W&B as ``table_<layout>`` in a run
    of its own (name ``table_<layout>``, job_type "table") in the sweep's group (the jobs' group: the sweep dir
    with "/" → "-", as kaft names it), with the project / entity / mode / tags of ``logger_cfg`` (the ``logger``
    config; ``name: none`` skips W&B). Returns the sections (empty if the sweep has no results)."""
    sections = build_table(jobs_frame(sweep_dir), table)
    if not sections:
        return []
    sweep = Path(sweep_dir)
    if write_files:
        from kaft.outputs import write_text

        write_text(sweep / "paper_table.md", render(sections, "md"), "the paper-table hook", legacy_header="### ")
        write_text(
            sweep / "paper_table.csv",
            render(sections, "csv"),
            "the paper-table hook",
            legacy_header="table,model,dataset,row,label,",
        )
    cfg = dict(logger_cfg or {})
    if cfg.get("name") == "none":
        return sections
    layout = sections[0].layout
    group = str(Path(sweep_dir)).replace(os.sep, "-").strip("-")  # = the jobs' W&B group
    init = {
        "project": cfg.get("project") or "kaft",
        "entity": cfg.get("entity") or None,
        "group": group,
        "name": f"table_{layout}",
        "tags": list(cfg.get("tags") or []) or None,
        "mode": cfg.get("mode"),
        "dir": str(sweep.resolve()),
    }
    log_table_to_wandb(flat_rows(sections), f"table_{layout}", run=run, init=init)
    return sections


# ----------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    """The CLI; an output path it may not write (see kaft/outputs.py) is one ``kaft: error:`` line, exit 2."""
    from kaft.outputs import OutputError

    try:
        return _main(argv)
    except OutputError as e:
        print(f"kaft: error: {e}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.table", description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="+", help="sweep dir(s), run dir(s) or folders of sweeps (searched recursively)")
    ap.add_argument(
        "--table",
        default="auto",
        choices=table_choices(),
        help="the paper table whose layout to use (auto: guessed from what the sweep varies)",
    )
    ap.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    ap.add_argument("--out", help="write here instead of stdout")
    ap.add_argument("--paper", default=str(PAPER_FILE), help="published numbers (YAML)")
    ap.add_argument("--no-paper", action="store_true", help="do not show the paper's numbers")
    args = ap.parse_args(argv)
    if args.out:
        from kaft.outputs import check_target

        check_target(args.out, "analysis.table")  # before the work: a refused path fails at once
    jobs = jobs_frame(*args.root)
    if jobs.empty:
        print(f"no results.json under {' '.join(args.root)}", file=sys.stderr)
        return 1
    sections = build_table(jobs, args.table, paper=[] if args.no_paper else load_paper(args.paper))
    text = render(sections, args.format)
    if args.out:
        from kaft.outputs import write_text

        write_text(args.out, text, "analysis.table")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
