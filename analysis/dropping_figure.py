"""The heat map of :mod:`analysis.dropping_map` (matplotlib, Agg backend, as :mod:`analysis.figures`): a module of
its own so that the map's Markdown needs no matplotlib (importing this one fails without it, and the map skips the
figure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.dropping_map import AXIS_NAMES, COLS, ROWS, Cell  # noqa: E402
from analysis.figures import save_figure  # noqa: E402

NAME = "fig_kaft_vs_dropping"


def _panel(ax, grid: Mapping[tuple, Cell], det: str, title: str, lim: float) -> None:
    rows = sorted({c[0] for c in grid if c[2] == det})
    cols = sorted({c[1] for c in grid if c[2] == det}, reverse=True)
    values = [
        [
            grid[(r, c, det)].interval.mean if grid.get((r, c, det)) and grid[(r, c, det)].interval else float("nan")
            for c in cols
        ]
        for r in rows
    ]
    im = ax.imshow(values, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cell = grid.get((r, c, det))
            if cell is None or cell.interval is None:
                continue
            iv = cell.interval
            half = "" if iv.half is None else f" ± {iv.half:.1f}"
            rp = (
                f"R {cell.recall:.0f} P {cell.precision:.0f}"
                if cell.recall is not None and cell.precision is not None
                else ""
            )
            ax.text(j, i, f"{iv.mean:+.1f}{half}\n{cell.winner}\n{rp}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set_xlabel(AXIS_NAMES[COLS])
    ax.set_ylabel(AXIS_NAMES[ROWS])
    ax.set_title(f"{title}\n{det}", fontsize=8)
    return im


def draw(panels: Sequence[tuple[str, Mapping[tuple, Cell]]], out: Path) -> list[Path]:
    """One panel per (comparison, detector); PNG and PDF in ``out``; [] without any interval."""
    todo = [(t, g, d) for t, g in panels for d in sorted({c[2] for c in g}) if any(v.interval for v in g.values())]
    if not todo:
        return []
    means = [abs(c.interval.mean) for _, g, _ in todo for c in g.values() if c.interval is not None]
    lim = max(1.0, max(means))
    fig, axes = plt.subplots(1, len(todo), figsize=(4.2 * len(todo), 3.6), squeeze=False)
    im = None
    for ax, (title, grid, det) in zip(axes[0], todo):
        im = _panel(ax, grid, det, title, lim)
    for ax in axes[0][1:]:  # one y label for the row of panels
        ax.set_ylabel("")
    fig.colorbar(im, ax=list(axes[0]), label="points (paired mean over seeds)")
    return save_figure(fig, [Path(out) / f"{NAME}.{ext}" for ext in ("png", "pdf")])
