"""The sweep-end paper table as a Hydra callback (``hydra.callbacks.paper_table`` in ``conf/config.yaml``).

It lives in analysis, named only in config, so that kaft never imports analysis: when a multirun ends it lays the
sweep out as the KaFT paper's table (:func:`analysis.table.log_sweep_tables`: the layout guessed from what the sweep
varies) into ``paper_table.md`` / ``paper_table.csv`` in the sweep dir and, unless ``logger=none``, logs it to W&B as
a ``wandb.Table`` in a run of the sweep's group.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class PaperTableCallback(Callback):
    """Writes (and logs) the sweep's paper-layout table when a multirun ends, then prints one line saying where.
    Never raises: a table is a convenience, not part of the sweep."""

    def __init__(self, print_note: bool = True, **_: Any):
        self.print_note = print_note

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        note = paper_table(Path(str(config.hydra.sweep.dir)), config)
        if note and self.print_note:
            print(note, flush=True)


def paper_table(sweep_dir: Path, config) -> str:
    """Write the sweep's paper-layout table and log it to W&B (the job config's ``logger``); returns a one-line
    note ("" when nothing was written)."""
    try:
        from omegaconf import OmegaConf

        from analysis.table import log_sweep_tables

        logger_cfg = OmegaConf.to_container(config.logger, resolve=True) if "logger" in config else {"name": "none"}
        sections = log_sweep_tables(sweep_dir, logger_cfg=logger_cfg)
    except Exception as e:  # noqa: BLE001
        log.warning("paper table: none for %s: %s", sweep_dir, e)
        return ""
    if not sections:
        return ""
    layout = sections[0].layout
    logged = "" if logger_cfg.get("name") == "none" else f", logged to W&B as table_{layout}"
    return f"kaft paper table: paper_table.md/.csv in {sweep_dir} ({layout} layout{logged})"


__all__ = ["PaperTableCallback", "paper_table"]
