"""A :class:`analysis.table.Section` as text grids (header + body of strings), and the grids as Markdown or LaTeX.

Markdown and LaTeX are written here rather than by ``DataFrame.to_markdown`` / ``to_latex``: the report's tables
keep their exact layout (right-aligned numbers, a booktabs table with the caption below) whatever pandas or
tabulate version is installed.
"""

from __future__ import annotations

BENCH_LABELS = {
    "medqa": "MedQA",
    "medmcqa": "MedMCQA",
    "mmlu_star": "MMLU*",
    "cmb": "CMB",
    "cmexam": "CMExam",
    "cmmlu_star": "CMMLU*",
    "xiezhi_history": "History",
    "xiezhi_engineering": "Engineering",
    "xiezhi_law": "Law",
    "halueval_qa": "QA",
    "halueval_dialogue": "Dialogue",
    "halueval_summarization": "Summarization",
    "mmedbench_zh": "Chinese",
    "mmedbench_en": "English",
    "mmedbench_fr": "French",
    "mmedbench_ja": "Japanese",
    "mmedbench_ru": "Russian",
    "mmedbench_es": "Spanish",
    "mmlu_id": "ID",
    "mmlu_ood": "OOD",
}


def fmt(row: dict, col: str, signed: bool = False) -> str:
    """A cell: mean (± std), † where the paper's number is doubtful, "failed" for a failed row, "-" for none."""
    if row.get("status") == "failed":
        return "failed"
    mean = row.get(col)
    if mean is None:
        return "-"
    s = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    if row.get(f"{col}_std") is not None:
        s += f" ± {row[f'{col}_std']:.2f}"
    return s + ("†" if row.get(f"{col}_doubt") is True else "")


def _n(row: dict) -> str:
    if row["source"] == "paper":
        return ""
    if row["status"] == "failed":
        return f"failed ({row['n_failed']})"
    return f"{row['n']}" + (f" (+{row['n_failed']} failed)" if row["n_failed"] else "")


def grid(sec) -> tuple[list[str], list[list[str]]]:
    """The long table: one line per row, benchmarks, Avg., Δ vs base (Δ vs Random), n."""
    spec = sec.spec
    header = [
        spec.first,
        *(BENCH_LABELS.get(b, b) for b in sec.columns),
        "Avg.",
        "Δ vs base",
        *["Δ vs Random"] * spec.versus_random,
        "n",
    ]
    body = []
    for row in sec.rows.to_dict("records"):
        body.append(
            [
                row["label"] + (" (base_metrics)" if row["note"] == "from base_metrics" else ""),
                *(fmt(row, b) for b in sec.columns),
                fmt(row, "avg"),
                fmt(row, "delta", signed=True),
                *[fmt(row, "delta_vs_random", signed=True)] * spec.versus_random,
                _n(row),
            ]
        )
    return header, body


def matrix(sec) -> tuple[list[str], list[list[str]]] | None:
    """The α × β rows as the Fig. 4 heatmap: rows α, columns β, cells Avg. (ours, then the paper's)."""
    ours = [r for r in sec.ours().to_dict("records") if r.get("alpha") is not None]
    if not ours:
        return None
    paper = sec.paper_of()
    alphas, betas = sorted({r["alpha"] for r in ours}), sorted({r["beta"] for r in ours})
    cell = {(r["alpha"], r["beta"]): r for r in ours}
    body = []
    for a in alphas:
        line = [f"α = {a:g}"]
        for b in betas:
            r = cell.get((a, b))
            s = "" if r is None else fmt(r, "avg")
            p = paper.get(r["id"]) if r is not None else None
            if p is not None and p.get("avg") is not None:
                s += f" (paper {fmt(p, 'avg')})"
            line.append(s or "-")
        body.append(line)
    return ["α \\ β", *(f"β = {b:g}" for b in betas)], body


def grids(sec) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """(subtitle, grid) for each table of a section: the α × β matrix first where the layout has one."""
    m = matrix(sec) if sec.spec.matrix else None
    return ([("Avg. (%) over α × β (Fig. 4)", m)] if m else []) + [("", grid(sec))]


def markdown(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    return "\n".join(out)


_TEX = [
    ("\\", "\\textbackslash{}"),
    ("&", "\\&"),
    ("%", "\\%"),
    ("_", "\\_"),
    ("#", "\\#"),
    ("$", "\\$"),
    ("±", "$\\pm$"),
    ("Δ", "$\\Delta$"),
    ("α", "$\\alpha$"),
    ("β", "$\\beta$"),
    ("λ", "$\\lambda$"),
    ("↳", "$\\hookrightarrow$"),
    ("†", "$^\\dagger$"),
    ("×", "$\\times$"),
    ("—", "---"),
]


def tex(s: str) -> str:
    for a, b in _TEX:
        s = s.replace(a, b)
    return s


def latex(header, body, caption: str) -> str:
    out = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join(tex(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    out += [" & ".join(tex(c) for c in line) + " \\\\" for line in body]
    out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{tex(caption)}}}", "\\end{table}"]
    return "\n".join(out)
