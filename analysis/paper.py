"""The published numbers (``analysis/paper_numbers.yaml``) as flat records, and the record that matches a row of
ours: same table family, model, dataset and row id."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")


def _record(t: dict, model: str, row: str, columns: list, values: dict, **extra) -> dict:
    rec = {
        "table": t["table"],
        "caption": t.get("caption", ""),
        "model": model,
        "dataset": t.get("dataset"),
        "row": str(row),
        "columns": columns,
        "values": values,
        "avg": None,
        "delta": None,
        "delta_vs_random": None,
        "delta_derived": False,
        "doubt": None,
        "doubt_cols": set(),
    }
    rec.update(extra)
    return rec


def _kaft_records(t: dict) -> list[dict]:
    cols, extra = list(t.get("columns") or []), list(t.get("extra") or [])
    cells: dict = {}
    for c in t.get("doubt_cells") or []:
        cells.setdefault((c[0], c[1]), set()).add(c[2])
    recs = []
    for model, rows in (t.get("rows") or {}).items():
        for row, vals in rows.items():
            vals = list(vals)
            rec = _record(t, model, row, cols, {c: v for c, v in zip(cols, vals) if v is not None})
            for name, v in zip(extra, vals[len(cols) :]):
                rec[name] = v
            if t.get("doubt"):
                rec["doubt"] = " ".join(str(t["doubt"]).split())
                rec["doubt_cols"] = cells.get((model, str(row)), set()) if t.get("doubt_cells") else {"*"}
            recs.append(rec)
    return recs


def _ren_records(t: dict) -> list[dict]:
    """Ren et al.'s Table 1: one record per (model, domain, row); the "homo" column is the domain's benchmark."""
    cols = list(t.get("columns") or [])
    cells = {tuple(c[:3]): set() for c in t.get("doubt_cells") or []}
    for c in t.get("doubt_cells") or []:
        cells[tuple(c[:3])].add(c[3])
    recs = []
    for model, domains in (t.get("rows") or {}).items():
        for domain, rows in domains.items():

            def bench(c):
                return t["homo_benchmark"][domain] if c == "homo" else c

            names = [bench(c) for c in cols]
            for row, vals in rows.items():
                dc = {bench(c) for c in cells.get((model, domain, row), set())}
                recs.append(
                    _record(
                        {**t, "table": "ren1", "dataset": t["domains"][domain]},
                        model,
                        row,
                        names,
                        dict(zip(names, vals)),
                        doubt_cols=dc,
                        doubt=" ".join(str(t.get("doubt", "")).split()) if dc else None,
                    )
                )
    return recs


def load_paper(path: str | os.PathLike = PAPER_FILE) -> list[dict]:
    """paper_numbers.yaml as flat records: table, model, dataset, row, values {benchmark: %}, avg, delta,
    delta_vs_random, doubt (text or None), doubt_cols (set; "*" = all), delta_derived."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    recs = [r for t in data.get("kaft") or [] for r in _kaft_records(t)]
    recs += [r for t in data.get("ren") or [] for r in _ren_records(t)]
    # Δ vs base for tables that print none (9-13): the same model's Base row on the same benchmarks (Table 2)
    bases = {(r["model"], r["dataset"], tuple(r["columns"])): r for r in recs if r["row"] == "base"}
    for r in recs:
        if r["delta"] is None and r["avg"] is not None and r["row"] != "base":
            b = bases.get((r["model"], r["dataset"], tuple(r["columns"])))
            if b is not None and b["avg"] is not None:
                r["delta"], r["delta_derived"] = round(r["avg"] - b["avg"], 2), b["table"]
    return recs


def table_ref(t) -> str:
    """How a footnote names a paper table."""
    return "Ren et al. Tab. 1" if t == "ren1" else f"Tab. {t}"


def match_paper(
    paper: Sequence[dict], tables: Sequence, model: str, dataset: str, row: str, benches: Sequence[str]
) -> dict | None:
    """The paper record for a row: one of ``tables``, same model, dataset and row id; the one sharing the most
    benchmarks with ours (earlier tables first)."""
    tables = list(tables)
    cands = [
        r for r in paper if r["table"] in tables and r["model"] == model and r["dataset"] == dataset and r["row"] == row
    ]
    if not cands:
        return None
    return max(cands, key=lambda r: (len(set(r["columns"]) & set(benches)), -tables.index(r["table"])))
