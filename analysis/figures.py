"""The KaFT paper's figures from a sweep's ``results.json`` files (matplotlib, Agg backend; PNG and PDF).

``python -m analysis.figures SWEEP_DIR --figure {2a,2b,2c,3,4,all} --out DIR``:

- ``2a`` distribution of the conflict Score per model (``detection.scores`` if a results.json has per-item scores,
  else ``detection.histogram_10bins``), one panel per (model, dataset), one line per distinct probe (seed);
- ``2b`` one subset only (Table 9 sweep): bars of Avg. per subset, error bars = std over seeds;
- ``2c`` ratio λ of the wrong subset (Table 10 sweep): Avg. vs λ, error bars = std over data seeds (and seeds);
- ``3`` reward strategies (Table 12 sweep): bars of Avg. per loss;
- ``4`` α × β heatmap of Avg. (Table 13 sweep).

Rows, means and stds are those of :mod:`analysis.table`; the paper's numbers, where it reports the same model on
the same data, are drawn as black markers (bars, curve) or printed in brackets (heatmap).
Writes ``fig<id>_<name>.png`` and ``.pdf`` into DIR and prints their paths. DIR may hold other files; a figure
file already there is replaced only if this tool wrote it and nobody changed it since, anything else is refused in
one ``kaft: error:`` line (the rule of :mod:`kaft.outputs`), checked for every figure before any is drawn.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import table as T  # noqa: E402
from analysis.jobs import jobs_frame  # noqa: E402
from kaft.results import read_results  # noqa: E402

FIGURES = {
    "2a": "score_distribution",
    "2b": "subsets",
    "2c": "wrong_ratio",
    "3": "reward_strategies",
    "4": "alpha_beta",
}
LAYOUT = {"2b": "9", "2c": "10", "3": "12", "4": "13"}


def _paths(out: Path, fid: str) -> list[Path]:
    return [out / f"fig{fid}_{FIGURES[fid]}.{ext}" for ext in ("png", "pdf")]


def _save(fig, out: Path, fid: str) -> list[Path]:
    return save_figure(fig, _paths(Path(out), fid))


def save_figure(fig, paths: list[Path]) -> list[Path]:
    """Write ``fig`` to each of ``paths`` (its format from the suffix) through kaft.outputs, then close it."""
    from kaft.outputs import write_file

    for p in paths:
        ext = p.suffix[1:]
        # no creation date in the PDF: re-rendering the same results gives the same file
        write_file(
            p,
            "analysis.figures",
            lambda tmp, ext=ext: fig.savefig(
                tmp, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None
            ),
        )
    plt.close(fig)
    return paths


def _panels(n: int, width: float = 4.2, height: float = 3.4):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _pairs(sec: T.Section) -> list[tuple[dict, dict | None]]:
    """(our row, the paper's row or None) for each of our rows."""
    paper = sec.paper_of()
    return [(r, paper.get(r["id"])) for r in sec.ours().to_dict("records")]


def _score_hist(res: dict):
    det = res.get("detection") or {}
    scores = det.get("scores")
    if isinstance(scores, list) and scores:
        counts = [0] * 10
        for s in scores:
            counts[min(max(int(float(s) * 10), 0), 9)] += 1
        return counts, "per-item scores"
    hist = det.get("histogram_10bins")
    if isinstance(hist, list) and len(hist) == 10:
        return [float(h) for h in hist], "histogram_10bins"
    return None, None


def fig_2a(jobs: pd.DataFrame, out: Path) -> list[Path]:
    """One panel per (model, dataset): the Score distribution of each distinct probe (one per seed on the testbed,
    where a seed is a model of its own) as a thin line, their mean as bars; the paper's detector (diversified)
    where the sweep has it."""
    groups: dict = {}
    for job in jobs[jobs["status"] == "done"].to_dict("records"):
        res = read_results(job["job_dir"]) or {}
        counts, _ = _score_hist(res)
        if counts is not None:
            probe = (res.get("cache_keys") or {}).get("detect") or job["job_dir"]
            groups.setdefault((job["model"], job["dataset"]), {}).setdefault(job["detection"], {}).setdefault(
                probe, counts
            )
    if not groups:
        raise ValueError("no results.json with detection.histogram_10bins or detection.scores")
    fig, axes = _panels(len(groups))
    edges = [i / 10 for i in range(10)]
    for ax, ((model, dataset), by_det) in zip(axes, groups.items()):
        det = "diversified" if "diversified" in by_det else next(iter(by_det))
        fracs = [[c / (sum(h) or 1) for c in h] for h in by_det[det].values()]
        mean = [sum(col) / len(fracs) for col in zip(*fracs)]
        ax.bar(edges, mean, width=0.1, align="edge", color="#4C72B0", edgecolor="white", label="mean")
        for f in fracs if len(fracs) > 1 else []:
            ax.step([*edges, 1.0], [*f, f[-1]], where="post", color="black", lw=0.7, alpha=0.6)
        ax.set_xlim(0, 1)
        ax.set_xlabel("conflict Score (fraction of answers = gold)")
        ax.set_ylabel("fraction of training items")
        ax.set_title(
            f"{model} · {dataset}\n({det}; {len(fracs)} probe{'s' if len(fracs) > 1 else ''}"
            f"{', one line each' if len(fracs) > 1 else ''})",
            fontsize=9,
        )
    fig.suptitle("Fig. 2(a): distribution of the conflict Score", fontsize=10, y=1.08)
    return _save(fig, out, "2a")


def _bar_fig(sections: Sequence[T.Section], out: Path, fid: str, title: str) -> list[Path]:
    fig, axes = _panels(len(sections))
    for ax, sec in zip(axes, sections):
        pairs = [(r, p) for r, p in _pairs(sec) if r["id"] != "base"]
        base = next((r for r, _ in _pairs(sec) if r["id"] == "base" and r.get("avg") is not None), None)
        xs = list(range(len(pairs)))
        means = [r.get("avg") or 0.0 for r, _ in pairs]
        errs = [r.get("avg_std") or 0.0 for r, _ in pairs]
        colors = ["#C44E52" if r["status"] == "failed" else "#4C72B0" for r, _ in pairs]
        ax.bar(xs, means, yerr=errs, capsize=3, color=colors, label="ours (mean ± std)")
        for x, (r, _) in zip(xs, pairs):
            if r["status"] == "failed":
                ax.text(x, 0, "failed", ha="center", va="bottom", rotation=90, fontsize=8)
        px = [(x, p["avg"]) for x, (_, p) in zip(xs, pairs) if p is not None and p.get("avg") is not None]
        if px:
            ax.scatter(*zip(*px), marker="D", color="black", zorder=3, s=18, label="paper")
        if base is not None:
            ax.axhline(base["avg"], ls="--", color="gray", lw=1, label="base")
        ax.set_xticks(xs, [r["label"] for r, _ in pairs], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Avg. accuracy (%)")
        ax.set_title(f"{sec.model} · {sec.dataset}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out, fid)


def fig_2c(sections: Sequence[T.Section], out: Path) -> list[Path]:
    fig, axes = _panels(len(sections))
    for ax, sec in zip(axes, sections):
        pts = sorted(
            ((r["ratio"], r, p) for r, p in _pairs(sec) if r["ratio"] is not None and r.get("avg") is not None),
            key=lambda t: t[0],
        )
        if pts:
            ax.errorbar(
                [100 * x for x, _, _ in pts],
                [r["avg"] for _, r, _ in pts],
                yerr=[r.get("avg_std") or 0.0 for _, r, _ in pts],
                marker="o",
                capsize=3,
                label="ours (mean ± std over data seeds)",
            )
        pp = [(100 * x, p["avg"]) for x, _, p in pts if p is not None and p.get("avg") is not None]
        if pp:
            ax.plot(*zip(*pp), ls="--", marker="D", color="black", ms=4, label="paper")
        base = next((r for r, _ in _pairs(sec) if r["id"] == "base" and r.get("avg") is not None), None)
        if base is not None:
            ax.axhline(base["avg"], ls=":", color="gray", lw=1, label="base")
        ax.set_xlabel("λ: share of the wrong subset kept (%)")
        ax.set_ylabel("Avg. accuracy (%)")
        ax.set_title(f"{sec.model} · {sec.dataset}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 2(c): ratio of wrong data", fontsize=10)
    return _save(fig, out, "2c")


def fig_4(sections: Sequence[T.Section], out: Path) -> list[Path]:
    fig, axes = _panels(len(sections), width=4.6, height=3.8)
    for ax, sec in zip(axes, sections):
        pairs = [(r, p) for r, p in _pairs(sec) if r.get("alpha") is not None]
        alphas = sorted({r["alpha"] for r, _ in pairs})
        betas = sorted({r["beta"] for r, _ in pairs})
        grid = [[float("nan")] * len(betas) for _ in alphas]
        text = [[""] * len(betas) for _ in alphas]
        for r, p in pairs:
            i, j = alphas.index(r["alpha"]), betas.index(r["beta"])
            if r.get("avg") is not None:
                grid[i][j] = r["avg"]
                text[i][j] = f"{r['avg']:.2f}" + (f"\n±{r['avg_std']:.2f}" if r.get("avg_std") is not None else "")
            else:
                text[i][j] = "failed"
            if p is not None and p.get("avg") is not None:
                text[i][j] += f"\n[{p['avg']:.2f}]"
        im = ax.imshow(grid, cmap="viridis", origin="upper", aspect="auto")
        for i in range(len(alphas)):
            for j in range(len(betas)):
                v = grid[i][j]
                light = v == v and im.norm(v) > 0.6  # dark text on the bright end of viridis
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7, color="black" if light else "white")
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("β (might-wrong)")
        ax.set_ylabel("α (wrong)")
        ax.set_title(f"{sec.model} · {sec.dataset}", fontsize=9)
        fig.colorbar(im, ax=ax, label="Avg. accuracy (%)")
    fig.suptitle("Fig. 4: α × β (ours; [paper])", fontsize=10)
    return _save(fig, out, "4")


def make_figure(jobs: pd.DataFrame, fid: str, out: str | os.PathLike) -> list[Path]:
    """Draw figure ``fid`` (2a, 2b, 2c, 3, 4) from ``jobs`` (:func:`analysis.jobs.jobs_frame`) into ``out``;
    returns the PNG and PDF paths."""
    out = Path(out)
    if fid == "2a":
        return fig_2a(jobs, out)
    sections = T.build_table(jobs, LAYOUT[fid])
    if fid == "2b":
        return _bar_fig(sections, out, "2b", "Fig. 2(b): training on one conflict subset only")
    if fid == "2c":
        return fig_2c(sections, out)
    if fid == "3":
        return _bar_fig(sections, out, "3", "Fig. 3: reward strategies")
    if fid == "4":
        return fig_4(sections, out)
    raise ValueError(f"unknown figure {fid!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="+", help="sweep dir(s) (searched recursively for results.json)")
    ap.add_argument("--figure", required=True, choices=[*FIGURES, "all"])
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    from kaft.outputs import OutputError, check_target

    try:
        for fid in FIGURES if args.figure == "all" else [args.figure]:
            for p in _paths(Path(args.out), fid):
                check_target(p, "analysis.figures")
    except OutputError as e:
        print(f"kaft: error: {e}", file=sys.stderr)
        return 2
    jobs = jobs_frame(*args.root)
    if jobs.empty:
        print(f"no results.json under {' '.join(args.root)}", file=sys.stderr)
        return 1
    rc = 0
    for fid in FIGURES if args.figure == "all" else [args.figure]:
        try:
            for p in make_figure(jobs, fid, args.out):
                print(p)
        except ValueError as e:
            print(f"figure {fid}: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
