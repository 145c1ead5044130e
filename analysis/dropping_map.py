"""Issue 24's map: when does down-weighting the conflicting subset (KaFT, Eq. 2) beat dropping it (no-conflict)?

``sweeps/kaft_vs_dropping.yaml`` runs {vanilla, no-conflict, KaFT at α = 0.1 and 0.5, auto-adapt} on a grid of
testbed worlds (:mod:`kaft.testbed.knobs`: how much of the benchmark asks what the training set teaches, how many
planted contradictions still contradict) and detector budgets (how many of the wrong subset's items are real
contradictions). This module reads its ``results.json`` files and draws, for each comparison, the paired difference
over seeds (mean ± half-width of the 95 % t interval, :mod:`analysis.stats`) in each cell of the grid, with the wrong
subset's recall and precision beside it (the testbed diagnostic, :mod:`kaft.testbed.plugin`): a Markdown map and,
where matplotlib is installed (the other figures use it), a heat map.

A cell's winner follows its interval only (:func:`analysis.stats.verdict` at threshold 0): ``KaFT`` / ``dropping`` /
``not resolved``; one seed never resolves a cell. Vanilla, no-conflict and auto-adapt do not read α: the sweep repeats
them at the second α from the cache and the map reads each (cell, seed) once.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis import stats as S
from analysis.jobs import detector_id
from kaft.results import dig, read_results, result_dirs

SWEEP = "kaft_vs_dropping"
ROWS, COLS = "test_on_train_frac", "contradict_keep"  # the map's axes: testbed.world knobs
AXIS_NAMES = {ROWS: "tested share (test_on_train_frac)", COLS: "purity (contradict_keep)"}
DEFAULT_BUDGET = (10, 10, "sample")  # conf/detection/diversified.yaml: No, Nr, estimator
#: (arm, reference, what the map's title calls it); an arm is named by :func:`arm`
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("kaft α=0.1", "no_conflict", "KaFT (α = 0.1) − no-conflict"),
    ("kaft α=0.5", "no_conflict", "KaFT (α = 0.5) − no-conflict"),
    ("auto_adapt", "no_conflict", "auto-adapt − no-conflict"),
    ("kaft α=0.1", "vanilla", "KaFT (α = 0.1) − vanilla"),
    ("kaft α=0.5", "vanilla", "KaFT (α = 0.5) − vanilla"),
)


@dataclass(frozen=True)
class Run:
    """One job of the sweep as the map reads it."""

    cell: tuple  # (test_on_train_frac, contradict_keep, detector label)
    arm: str
    seed: int
    average: float  # %
    recall: float | None  # % of the planted contradictions in the wrong subset
    precision: float | None  # % of the wrong subset's items that are contradictions
    confident: float | None = None  # % of the wrong subset's items the base model confidently answers wrongly


def arm(cfg: Mapping) -> str | None:
    """The sweep's arm of a job config: vanilla, no_conflict, auto_adapt, ``kaft α=<alpha>``; None for others."""
    strategy, loss = dig(cfg, ("strategy", "name")) or "full", dig(cfg, ("loss", "name"))
    if strategy == "no_conflict" and loss == "constant":
        return "no_conflict"
    if strategy != "full":
        return None
    if loss == "kaft":
        a = dig(cfg, ("loss", "alpha"))
        return f"kaft α={float(a if a is not None else 0.1):g}"
    return {"constant": "vanilla", "auto_adapt": "auto_adapt"}.get(loss)


def detector_label(det: Mapping) -> str:
    """The detector and, when it is not the paper's, its budget: ``diversified``, ``no_both``,
    ``diversified (No=3, Nr=3, sample)``."""
    name = detector_id(dict(det))
    budget = (det.get("num_orders", 10), det.get("num_samples", 10), det.get("estimator", "sample"))
    if name in ("icl", "no_both") or tuple(budget) == DEFAULT_BUDGET:
        return name
    return f"{name} (No={budget[0]}, Nr={budget[1]}, {budget[2]})"


def _cell(cfg: Mapping) -> tuple:
    from kaft.testbed.config import DEFAULT_CONFIG

    world = dig(cfg, ("testbed", "world")) or {}
    knob = {k: float(world.get(k, DEFAULT_CONFIG["world"][k])) for k in (ROWS, COLS)}
    return knob[ROWS], knob[COLS], detector_label(cfg.get("detection") or {})


def _wrong_subset(res: Mapping) -> tuple[float | None, float | None]:
    """(recall, precision) in % from the testbed diagnostic; precision from recall and sizes for older results."""
    det = res.get("detection") or {}
    r = det.get("contradict_in_lowest_subset")
    p = det.get("lowest_subset_precision")
    if p is None and r is not None:
        n_c = (det.get("n_by_kind") or {}).get("contradict")
        sizes = list((res.get("subsets") or {}).values())
        p = r * n_c / sizes[0] if n_c is not None and sizes and sizes[0] else None
    return (None if r is None else 100 * r), (None if p is None else 100 * p)


def read_runs(sweep_dir: str | Path) -> list[Run]:
    """The sweep's finished jobs of the five arms, one per (cell, arm, seed)."""
    seen, out = set(), []
    for d in result_dirs(sweep_dir):
        res = read_results(d) or {}
        cfg, avg = res.get("config") or {}, dig(res, ("metrics", "average"))
        name = arm(cfg)
        if res.get("status") != "done" or name is None or avg is None:
            continue
        conf = dig(res, ("detection", "high_conf_error_by_subset", "wrong"))
        conf = None if conf is None or conf != conf else 100 * float(conf)  # NaN: an empty subset
        run = Run(_cell(cfg), name, int(cfg.get("seed", 0)), 100 * float(avg), *_wrong_subset(res), conf)
        if (run.cell, run.arm, run.seed) not in seen:
            seen.add((run.cell, run.arm, run.seed))
            out.append(run)
    return out


@dataclass(frozen=True)
class Cell:
    """One cell of one comparison's map."""

    interval: S.Interval | None
    recall: float | None  # mean over seeds, %
    precision: float | None
    confident: float | None = None  # mean over seeds, %: what a user can read on their own data

    @property
    def winner(self) -> str:
        return {"reproduced": "KaFT", "contradicted": "dropping"}.get(S.verdict(self.interval), "not resolved")


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def cells(runs: Sequence[Run], a: str, b: str) -> dict[tuple, Cell]:
    """Per cell: the paired difference ``a − b`` over the seeds that have both, and the wrong subset's recall and
    precision (mean over seeds; every arm of a seed shares one probing)."""
    by = {(r.cell, r.arm, r.seed): r for r in runs}
    out = {}
    for cell in sorted({r.cell for r in runs}, key=str):
        seeds = sorted({r.seed for r in runs if r.cell == cell})
        diffs = [
            by[(cell, a, s)].average - by[(cell, b, s)].average
            for s in seeds
            if (cell, a, s) in by and (cell, b, s) in by
        ]
        probe = [
            next((r for r in runs if r.cell == cell and r.seed == s and r.recall is not None), None) for s in seeds
        ]
        out[cell] = Cell(
            S.t_interval(diffs),
            _mean([p.recall for p in probe if p]),
            _mean([p.precision for p in probe if p]),
            _mean([p.confident for p in probe if p]),
        )
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} %"


def cell_text(c: Cell) -> str:
    if c.interval is None:
        return "–"
    conf = "" if c.confident is None else f", C {_pct(c.confident)}"
    return f"{c.interval.text()} · **{c.winner}** · R {_pct(c.recall)}, P {_pct(c.precision)}{conf}"


def map_tables(runs: Sequence[Run], a: str, b: str, title: str) -> list[str]:
    """One comparison as Markdown maps, one per detector: rows the tested share, columns the purity."""
    grid = cells(runs, a, b)
    if all(c.interval is None for c in grid.values()):
        return []
    lines = [f"#### {title}", ""]
    for det in sorted({c[2] for c in grid}):
        rows = sorted({c[0] for c in grid if c[2] == det})
        cols = sorted({c[1] for c in grid if c[2] == det}, reverse=True)
        lines += [
            f"Detector `{det}`; rows: {AXIS_NAMES[ROWS]}, columns: {AXIS_NAMES[COLS]}.",
            "",
            "| tested share \\ purity | " + " | ".join(f"{v:g}" for v in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for rv in rows:
            texts = [cell_text(grid[(rv, cv, det)]) if (rv, cv, det) in grid else "–" for cv in cols]
            lines.append(f"| {rv:g} | " + " | ".join(texts) + " |")
        lines.append("")
    return lines


def summary(runs: Sequence[Run]) -> list[str]:
    """Where each method wins, counted over the cells, as the intervals resolve them."""
    lines = []
    for a, b, title in COMPARISONS:
        grid = {k: c for k, c in cells(runs, a, b).items() if c.interval is not None}
        if not grid:
            continue
        wins = {w: [k for k, c in grid.items() if c.winner == w] for w in ("KaFT", "dropping", "not resolved")}
        named = "; ".join(f"{w}: {len(ks)}" for w, ks in wins.items())
        lines.append(f"- {title}: {len(grid)} cells — {named}.")
    return lines


def section(sweep_dir: str | Path, figs: Path | None = None) -> list[str]:
    """The report's section on the map (Markdown lines), and its figure in ``figs`` where matplotlib is installed."""
    runs = read_runs(sweep_dir) if Path(sweep_dir).exists() else []
    lines = ["## When does down-weighting beat dropping? (`sweeps/kaft_vs_dropping.yaml`)", ""]
    if not runs:
        return lines + ["No results yet: `python -m analysis.report --only kaft_vs_dropping` runs the sweep.", ""]
    seeds = sorted({r.seed for r in runs})
    lines += [
        f"{len(runs)} jobs over {len({r.cell for r in runs})} cells, seeds {', '.join(map(str, seeds))}. Each cell: "
        "the paired difference in average accuracy (points, mean ± 95 % t half-width [low, high] over seeds), the "
        "side its interval resolves (KaFT, dropping, or not resolved), and the wrong subset's recall (R: planted "
        "contradictions it holds) and precision (P: its items that are contradictions), mean over seeds, which only "
        "a world that knows its contradictions can give; C: its items whose base answer is a high-confidence error "
        "(`detection.high_conf_error_by_subset`, majority answer wrong with share > τ_c), which any data set gives."
        + (" **One seed: a preview, no cell is resolved.**" if len(seeds) < 2 else ""),
        "",
    ]
    lines += summary(runs) + [""]
    for a, b, title in COMPARISONS:
        lines += map_tables(runs, a, b, title)
    if figs is not None:
        made = figure(runs, figs)
        lines += [f"![{p.stem}](figures/{p.name})" for p in made if p.suffix == ".png"] + ([""] if made else [])
    return lines


def figure(runs: Sequence[Run], out: Path) -> list[Path]:
    """Heat maps of KaFT (α = 0.1) − no-conflict and − vanilla per detector; [] without matplotlib or data."""
    try:
        from analysis.dropping_figure import draw
    except ImportError:  # matplotlib is optional: the Markdown map carries every number
        return []
    panels = [(title, cells(runs, a, b)) for a, b, title in (COMPARISONS[0], COMPARISONS[3])]
    return draw(panels, Path(out))
