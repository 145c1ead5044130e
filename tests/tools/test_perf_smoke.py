"""Smoke runs of perf/stages.py (``--quick``, one section at a time) and perf/gpu.py (``--dry-run``, the
no-CUDA exit, and its code path on the CPU with a tiny model), so that the scripts cannot rot. Not for numbers."""

from __future__ import annotations

import re

import pytest
import torch


@pytest.fixture()
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _table_rows(out: str, section: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if re.match(rf"^\| {section} +\|", line)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("section", ["probe", "eval", "scaling", "train", "e2e", "sweep"])
def test_perf_quick_section(section, capsys, keep_threads, tmp_path, monkeypatch):
    from perf import stages as perf

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    rows = perf.main(["--quick", "--only", section])
    out = capsys.readouterr().out
    assert rows and all(r["section"] == section for r in rows)
    printed = _table_rows(out, section)
    assert len(printed) == len(rows)
    for cells in printed:  # every row has a positive ratio
        ratio = cells[4]
        assert ratio.endswith("x") and float(ratio[:-1]) > 0, cells
    if section == "eval":
        assert "accuracies identical" in out  # kaft's in-memory call and the lm_eval CLI score the same


def test_perf_rejects_unknown_section():
    from perf import stages as perf

    with pytest.raises(SystemExit):
        perf.main(["--only", "nope"])


def test_gpu_dry_run_prints_the_plan(capsys):
    from perf import gpu

    assert gpu.main(["--dry-run", "--model", "llama3-8b", "qwen2.5-7b", "--layers", "4"]) == 0
    out = capsys.readouterr().out
    assert "llama3-8b: layers 4, hidden 4096" in out and "qwen2.5-7b: layers 4" in out
    full = gpu.param_counts(gpu.shape("llama3-8b", None))
    assert 7.4e9 < full["non_embedding"] + full["embedding"] < 8.2e9  # Llama-3-8B has 8.03 B parameters
    assert 40e6 < full["lora"] < 43e6  # r = 16 on all linear layers: 41.9 M


def test_gpu_without_cuda_exits_with_a_message(capsys, monkeypatch):
    from perf import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--model", "tiny"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_gpu_code_path_on_cpu(capsys, keep_threads):
    from perf import gpu

    assert (
        gpu.main(
            [
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--batch",
                "2",
                "--seq",
                "32",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--probe-items",
                "4",
                "--probe-len",
                "24",
                "--probe-batch",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("| tiny |")]
    assert line and "nan" not in line[0].split("|")[3]  # train tokens/s measured
