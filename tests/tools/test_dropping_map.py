"""Issue 24's map (analysis/dropping_map.py) on fabricated results.json files (no model, fast): each cell of the grid
is a paired difference over seeds with a 95 % t interval and the side it resolves, with the wrong subset's recall and
precision beside it; ``python -m analysis.report --only kaft_vs_dropping --section --no-run`` writes the section."""

import json

import pytest

from analysis import dropping_map as M
from analysis import report as R
from analysis import stats as S

GAPS = {  # (tested share, purity) -> KaFT(α=0.1) − no-conflict per seed, in points
    (0.0, 1.0): [-1.0, -1.2, -0.8, -1.1, -0.9],  # dropping wins
    (0.2, 1.0): [2.0, 2.5, 1.5, 2.2, 1.8],  # KaFT wins
    (0.0, 0.5): [1.0, -1.0, 2.0, -2.0, 0.5],  # not resolved
}


def _res(seed, strategy, loss, avg, world, alpha=None, recall=0.9, precision=0.7, det=None, old=False):
    detection = {"contradict_in_lowest_subset": recall, "mean": 0.5, "high_conf_error_by_subset": {"wrong": 0.4}}
    if old:  # results from before the diagnostic reported precision: from recall, n_by_kind and the sizes
        detection["n_by_kind"] = {"contradict": 40}
    else:
        detection["lowest_subset_precision"] = precision
    loss_cfg = {"name": loss, **({"alpha": alpha} if alpha is not None else {})}
    return {
        "status": "done",
        "config": {
            "seed": seed,
            "strategy": {"name": strategy},
            "loss": loss_cfg,
            "detection": det or {"name": "diversified", "num_orders": 10, "num_samples": 10, "estimator": "sample"},
            "testbed": {"seed": seed, "world": world},
        },
        "metrics": {"average": avg / 100},
        "detection": detection,
        "subsets": {"wrong": 50, "might-wrong": 50, "might-right": 50, "right": 50},
    }


def _sweep(root, gaps=GAPS, seeds=range(5)):
    jobs = []
    for (frac, keep), diffs in gaps.items():
        world = {"test_on_train_frac": frac, "contradict_keep": keep}
        for s in seeds:
            nc = 80.0 + s
            for alpha in (0.1, 0.5):  # the sweep repeats the arms that do not read alpha
                jobs += [
                    _res(s, "full", "constant", 70.0 + s, world),
                    _res(s, "no_conflict", "constant", nc, world),
                    _res(s, "full", "auto_adapt", nc, world),
                    _res(s, "full", "kaft", nc + (diffs[s] if alpha == 0.1 else -3.0), world, alpha=alpha),
                ]
    for i, job in enumerate(jobs):
        d = root / M.SWEEP / f"{i}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(job))
    return root / M.SWEEP


def test_arms_are_named_by_strategy_loss_and_alpha():
    assert M.arm({"strategy": {"name": "full"}, "loss": {"name": "constant"}}) == "vanilla"
    assert M.arm({"strategy": {"name": "no_conflict"}, "loss": {"name": "constant"}}) == "no_conflict"
    assert M.arm({"strategy": {"name": "full"}, "loss": {"name": "kaft", "alpha": 0.5}}) == "kaft α=0.5"
    assert M.arm({"strategy": {"name": "full"}, "loss": {"name": "auto_adapt"}}) == "auto_adapt"
    assert M.arm({"strategy": {"name": "wrong_only"}, "loss": {"name": "constant"}}) is None
    assert M.detector_label({"name": "diversified", "num_orders": 3, "num_samples": 3}) == (
        "diversified (No=3, Nr=3, sample)"
    )
    assert M.detector_label({"name": "diversified", "diverse_query": False, "response_sampling": False}) == "no_both"


def test_each_cell_is_a_paired_interval_resolved_by_its_side(tmp_path):
    runs = M.read_runs(_sweep(tmp_path))
    assert len(runs) == 3 * 5 * 5  # cells x seeds x arms: the repeats at the second alpha read once
    grid = M.cells(runs, "kaft α=0.1", "no_conflict")
    det = "diversified"
    for (frac, keep), diffs in GAPS.items():
        c = grid[(frac, keep, det)]
        want = S.t_interval(diffs)
        assert (
            (c.interval.mean, c.interval.half) == pytest.approx((want.mean, want.half))
            and c.recall == pytest.approx(90)
            and c.precision == pytest.approx(70)
        )
    assert [grid[(f, k, det)].winner for f, k in GAPS] == ["dropping", "KaFT", "not resolved"]
    assert all(c.winner == "dropping" for c in M.cells(runs, "kaft α=0.5", "no_conflict").values())
    assert all(c.interval.mean == pytest.approx(10) for c in M.cells(runs, "no_conflict", "vanilla").values())


def test_precision_of_older_results_comes_from_recall_and_the_subset_sizes(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(_res(0, "full", "constant", 70, {}, recall=0.75, old=True)))
    (run,) = M.read_runs(tmp_path)
    assert (run.recall, run.precision) == (75, 60)  # 0.75 * 40 contradictions / 50 items
    assert run.cell == (0.0, 1.0, "diversified")  # knobs absent: the default world


def test_the_section_maps_every_comparison_and_says_when_it_is_one_seed(tmp_path):
    lines = M.section(_sweep(tmp_path), tmp_path / "figs")
    text = "\n".join(lines)
    assert "- KaFT (α = 0.1) − no-conflict: 3 cells — KaFT: 1; dropping: 1; not resolved: 1." in text
    assert "#### KaFT (α = 0.1) − vanilla" in text and "| tested share \\ purity | 1 | 0.5 |" in text
    iv = M.cells(M.read_runs(tmp_path / M.SWEEP), "kaft α=0.1", "no_conflict")[(0.2, 1.0, "diversified")].interval
    assert iv.text() == S.t_interval(GAPS[(0.2, 1.0)]).text()
    assert f"| 0.2 | {iv.text()} · **KaFT** · R 90 %, P 70 %, C 40 % | – |" in text
    pytest.importorskip("matplotlib")
    assert (tmp_path / "figs" / "fig_kaft_vs_dropping.png").exists()
    one = M.section(_sweep(tmp_path / "s1", seeds=[0]))
    assert "One seed: a preview, no cell is resolved." in "\n".join(one) and "(no interval: 1 seed)" in "\n".join(one)
    assert "No results yet" in "\n".join(M.section(tmp_path / "none"))


def test_the_report_writes_the_section_alone(tmp_path):
    sweeps = tmp_path / "sweeps"
    _sweep(sweeps)
    out = tmp_path / "REPORT_dropping.md"
    argv = ["--seeds", "0,1,2,3,4", "--only", "kaft_vs_dropping", "--section", "--no-run"]
    assert R.main([*argv, "--sweeps-dir", str(sweeps), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(R.REPORT_HEADER) and "## When does down-weighting beat dropping?" in text
    assert "paper's claims" not in text and "#### KaFT (α = 0.5) − no-conflict" in text


def test_report_overrides_reach_every_sweep_command(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(R, "run_sweep", lambda name, out, seeds, extra: seen.append((name, seeds, extra)) or 1.0)
    argv = ["--seeds", "0", "--only", "kaft_vs_dropping", "--section", "--override", "detection=diversified"]
    assert R.main([*argv, "--sweeps-dir", str(tmp_path / "s"), "--out", str(tmp_path / "r.md")]) == 0
    assert seen == [("kaft_vs_dropping", [0], ["detection=diversified"])]
    assert "--override detection=diversified" in (tmp_path / "r.md").read_text()
