"""ILP's App. Table 10 (analysis.ilp_causes): our share of unlearned items per cause beside the paper's, read from
the jobs' ``diagnosis.causes`` blocks (kaft.diagnosis.causes.causes_block)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import ilp_causes as T
from kaft.diagnosis.causes import ILP_ORDER, attribute


def _block(counts, pr=None, not_applicable=None):
    full = {c: counts.get(c, 0) for c in (*ILP_ORDER, "unattributed")}
    b = {"counts": full, "unlearned": sum(full.values()), "not_applicable": not_applicable or {}}
    return {**b, "precision_recall": pr} if pr else b


def test_paper_numbers_are_ilp_table_10():
    paper = T.paper_table10()
    assert list(paper) == list(ILP_ORDER) == list(T.ORDER)
    assert [paper[c]["proportion"] for c in ILP_ORDER] == [18.7, 13.2, 14.1, 17.4, 14.6]
    assert sum(paper[c]["proportion"] for c in ILP_ORDER) == pytest.approx(78.0)
    assert paper["forgetting"]["label"] == "IV. Left-side Forgetting"


def test_frame_means_over_jobs_with_precision_recall():
    pr = {"missing_knowledge": {"precision": 0.5, "recall": 1.0}}
    blocks = [
        _block({"missing_knowledge": 2, "pretraining_conflict": 2}, pr, {"forgetting": "training was not sequential"}),
        _block({"missing_knowledge": 1, "unattributed": 3}, pr),
    ]
    f = T.table10_frame(blocks).set_index("cause")
    assert list(f.index) == [*ILP_ORDER, "unattributed"]
    assert f.loc["missing_knowledge", "ours"] == pytest.approx(37.5)  # 50 % and 25 %
    assert f.loc["missing_knowledge", "n"] == 2 and f.loc["missing_knowledge", "paper"] == 18.7
    assert f.loc["missing_knowledge", "precision"] == 50.0 and f.loc["missing_knowledge", "recall"] == 100.0
    assert pd.isna(f.loc["unattributed", "paper"]) and f.loc["unattributed", "ours"] == pytest.approx(37.5)
    md = T.render(T.table10_frame(blocks))
    assert "| I. Base Model Knowledge Limitations | 37.5 ± 17.7 | 2 | 18.7 | 50.0 | 100.0 |" in md
    assert "not applicable: training was not sequential" in md
    assert T.render(T.table10_frame(blocks), "csv").startswith("cause,label,ours")


def test_cli_reads_a_sweep(tmp_path, capsys):
    rows = [{"unlearned": True, "base_correct": False, "base_high_conf_error": False}] * 2
    items = [{"question": "q?", "options": ["a", "b"], "answer": 0}] * 2
    block = {k: v for k, v in attribute(rows, items).items() if k != "per_item"}
    for i, res in enumerate([{"diagnosis": {"causes": block}}, {"status": "done"}]):
        (tmp_path / f"{i}_job").mkdir()
        (tmp_path / f"{i}_job" / "results.json").write_text(json.dumps(res))
    assert T.main([str(tmp_path)]) == 0
    assert "| I. Base Model Knowledge Limitations | 100.0 | 1 | 18.7 |" in capsys.readouterr().out
    assert T.main([str(tmp_path / "1_job")]) == 1
