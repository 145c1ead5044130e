"""Smoke run of perf/loss_overhead.py (--quick on the small random model): every variant steps and prints."""

from __future__ import annotations

import re

import torch


def test_loss_overhead_quick_runs(capsys):
    from perf import loss_overhead

    n = torch.get_num_threads()
    try:
        loss_overhead.main(["--quick", "--skip-testbed", "--rounds", "1", "--warmup", "0"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    for name in ("ce (HF labels=)", "constant", "kaft", "eaft", "dft", "dpo", "eaft (full)"):
        rows = re.findall(rf"^\| {re.escape(name)} +\| +([\d.]+) \| +([\d.]+) \|", out, flags=re.M)
        assert len(rows) == 2, (name, out)  # 1-token and long-answer tables
        assert all(float(ms) > 0 and float(r) > 0 for ms, r in rows)
