"""analysis.table / analysis.figures on fabricated sweep trees (no model, fast)."""

import csv
import io
import json
import statistics

import pytest

from analysis import layouts as Lay
from analysis import table as T
from analysis.jobs import jobs_frame
from analysis.paper import load_paper
from analysis.render import matrix

BENCH = ["medqa", "medmcqa", "mmlu_star", "cmb", "cmexam", "cmmlu_star"]
BASE = {b: 0.5 for b in BENCH}


def _metrics(accs):
    return {
        "benchmarks": {b: {"acc": a, "n": 100} for b, a in accs.items()},
        "average": statistics.fmean(accs.values()),
    }


def _res(
    *,
    strategy="full",
    loss="constant",
    seed=0,
    acc=0.6,
    model="llama3_8b",
    dataset="medqa",
    status="done",
    subset=None,
    ratio=None,
    data_seed=None,
    alpha=0.1,
    beta=0.5,
    k=4,
    detection="diversified",
    method=None,
    base=BASE,
    hist=None,
):
    accs = {b: acc + 0.01 * i for i, b in enumerate(BENCH)} if not isinstance(acc, dict) else acc
    cfg = {
        "loss": {"name": loss},
        "alpha": alpha,
        "beta": beta,
        "partition": {"k": k},
        "strategy": {"name": strategy, "subset": subset, "ratio": ratio, "data_seed": data_seed},
        "detection": {"name": detection},
        "seed": seed,
        "model": {"name": model},
        "dataset": {"name": dataset},
    }
    if method:
        cfg["method"] = method
    if status == "failed":
        return {"status": "failed", "error": "boom", "overrides": [], "metrics": None, "config": cfg}
    m = _metrics(accs)
    b = _metrics(base) if base else None
    return {
        "status": "done",
        "overrides": [],
        "config": cfg,
        "metrics": m,
        "base_metrics": b,
        "delta_vs_base": (m["average"] - b["average"]) if b else None,
        "detection": {"mean": 0.6, "std": 0.2, "histogram_10bins": hist or [5, 3, 2, 2, 3, 4, 6, 8, 10, 20]},
    }


def _write(root, jobs):
    for i, job in enumerate(jobs):
        d = root / f"{i}_job"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(job))
    return root


def _ours(sections, sec=0):
    return sections[sec].ours().to_dict("records")


def _rows(section):
    return section.rows.to_dict("records")


@pytest.fixture
def main_sweep(tmp_path):
    jobs = []
    for seed in (0, 1, 2):
        jobs += [
            _res(strategy="none", seed=seed, acc=BASE),
            _res(strategy="full", loss="kaft", seed=seed, acc=0.60 + 0.01 * seed),
            _res(strategy="no_conflict", seed=seed, acc=0.58),
            _res(strategy="full", seed=seed, acc=0.55),
            _res(strategy="self_align", seed=seed, acc=0.57, status="failed" if seed == 2 else "done"),
        ]
        jobs[-1]["config"]["strategy"]["answer_source"] = "greedy"  # the paper's reading, method=self_align
    return _write(tmp_path / "sweep", jobs)


def test_main_table_rows_stats_and_paper(main_sweep):
    runs = jobs_frame(main_sweep)
    assert Lay.infer_layout(runs).name == "main"
    secs = T.build_table(runs, "2")
    assert len(secs) == 1 and secs[0].columns == BENCH and secs[0].paper_refs == ["Tab. 2"]
    ours = _ours(secs)
    assert [r["id"] for r in ours] == ["base", "vanilla", "no_conflict", "self_align", "kaft"]  # the paper's order
    kaft = ours[-1]
    assert kaft["n"] == 3 and kaft["medqa"] == pytest.approx(61.0)
    assert kaft["medqa_std"] == pytest.approx(1.0)
    avg = statistics.fmean(0.60 + 0.01 * i for i in range(6)) * 100
    assert kaft["avg"] == pytest.approx(avg + 1.0)
    assert kaft["delta"] == pytest.approx(avg + 1.0 - 50.0)
    assert ours[0]["delta"] is None and ours[0]["avg"] == pytest.approx(50.0)
    sa = ours[3]
    assert (sa["n"], sa["n_failed"], sa["status"]) == (2, 1, "partial")
    # each of our rows is followed by the paper's row (LLaMA3-8B on MedQA is in Table 2)
    rows = _rows(secs[0])
    i = [r["id"] for r in rows].index("kaft")
    paper = rows[i + 1]
    assert paper["source"] == "paper" and paper["ref"] == "Tab. 2"
    assert paper["medqa"] == 64.10 and paper["avg"] == 55.96 and paper["delta"] == 1.80
    md = T.render(secs, "md")
    assert "| KaFT (Ours) | 61.00 ± 1.00 |" in md and "↳ paper (Tab. 2) | 64.10 |" in md
    assert "| Method | MedQA | MedMCQA | MMLU* | CMB | CMExam | CMMLU* | Avg. | Δ vs base | n |" in md
    assert "2 (+1 failed)" in md


def test_failed_row_and_unknown_model_has_no_paper(tmp_path):
    root = _write(
        tmp_path / "s",
        [
            _res(model="testbed", dataset="testbed", strategy="none", acc=BASE),
            _res(model="testbed", dataset="testbed", loss="kaft", status="failed"),
            _res(model="testbed", dataset="testbed", loss="kaft", seed=1, status="failed"),
        ],
    )
    secs = T.build_table(jobs_frame(root), "2")
    assert all(r["source"] == "ours" for r in _rows(secs[0])) and secs[0].paper_refs == []
    kaft = _ours(secs)[-1]
    assert kaft["status"] == "failed" and kaft["n"] == 0 and kaft["n_failed"] == 2
    md = T.render(secs, "md")
    assert "| KaFT (Ours) | failed |" in md and "failed (2)" in md


def test_base_row_from_base_metrics_and_method_in_config(tmp_path):
    root = _write(
        tmp_path / "s", [_res(method="kaft", strategy="full", loss="kaft", acc=0.6), _res(method="vanilla", acc=0.55)]
    )
    secs = T.build_table(jobs_frame(root), "2")
    ours = _ours(secs)
    assert [r["id"] for r in ours] == ["base", "vanilla", "kaft"] and ours[0]["note"] == "from base_metrics"
    assert ours[0]["avg"] == pytest.approx(50.0) and ours[0]["n"] == 1  # one seed: deduplicated
    assert "base_metrics" in T.render(secs, "md")


def test_wrong_ratio_table_over_data_seeds_and_doubtful_paper(tmp_path):
    jobs = [
        _res(strategy="wrong_ratio", ratio=r, data_seed=ds, acc=0.5 + 0.1 * r + 0.01 * ds, model="mistral_7b")
        for r in (0.0, 0.5, 1.0)
        for ds in (0, 1, 2)
    ]
    runs = jobs_frame(_write(tmp_path / "s", jobs))
    assert Lay.infer_layout(runs).name == "10"
    secs = T.build_table(runs, "10")
    ours = _ours(secs)
    assert [r["id"] for r in ours] == ["0", "0.5", "1"] and [r["label"] for r in ours][1] == "λ = 50%"
    assert ours[1]["n"] == 3 and ours[1]["medqa_std"] == pytest.approx(1.0) and ours[1]["ratio"] == 0.5
    paper = secs[0].paper_of()["0"]
    assert paper["medqa"] == 58.37 and paper["medqa_doubt"]  # Table 10's swapped labels
    assert paper["delta"] == pytest.approx(48.22 - 43.28)  # derived from Table 2's Base
    md = T.render(secs, "md")
    assert "58.37†" in md and "† Tab. 10:" in md


def test_subsets_detection_partitions_losses_ren_layouts(tmp_path):
    sub = _write(
        tmp_path / "t9",
        [
            _res(strategy="subset", subset=s, acc=a)
            for s, a in [
                ("wrong", 0.2),
                ("right", 0.55),
                ("random", 0.54),
                ("might-right", 0.56),
                ("might-wrong", 0.53),
            ]
        ],
    )
    secs = T.build_table(jobs_frame(sub))
    assert secs[0].layout == "9"
    assert [r["id"] for r in _ours(secs)] == ["random", "right", "might-right", "might-wrong", "wrong"]
    assert _rows(secs[0])[1]["ref"] == "Tab. 9" and _rows(secs[0])[1]["avg"] == 54.38

    det = [
        _res(strategy="wrong_only", detection=d, acc=a)
        for d, a in [("diversified", 0.27), ("no_both", 0.49), ("icl", 0.45)]
    ]
    det += [
        _res(method="random_subset", strategy="subset", subset="random", detection=d, acc=0.54)
        for d in ("diversified", "no_both", "icl")
    ]
    secs = T.build_table(jobs_frame(_write(tmp_path / "t4", det)))
    assert secs[0].layout == "4"
    ours = _ours(secs)
    assert [r["id"] for r in ours] == ["random", "diversified", "no_both", "icl"]
    assert ours[0]["n"] == 1  # the random set is one replicate, whatever the detector
    assert ours[1]["delta_vs_random"] == pytest.approx(-27.0)
    md = T.render(secs, "md")
    assert "Δ vs Random" in md and "Ours (diversified)" in md and "-27.22" in md

    part = _write(tmp_path / "t5", [_res(loss="kaft", k=k, acc=0.55) for k in (8, 2, 4)])
    secs = T.build_table(jobs_frame(part))
    assert secs[0].layout == "5" and [r["id"] for r in _ours(secs)] == ["base", "k2", "k4", "k8"]

    losses = _write(tmp_path / "tl", [_res(loss=lo, acc=0.55) for lo in ("dpo", "kaft", "constant", "eaft")])
    secs = T.build_table(jobs_frame(losses))
    # every row names what its loss used (the registry's label and reads; an old eaft result read its exponent from
    # alpha)
    assert secs[0].layout == "losses" and [r["id"] for r in _ours(secs)] == [
        "constant",
        "kaft (α=0.1, β=0.5)",
        "eaft (eaft_alpha=0.1)",
        "dpo",
    ]
    assert [r["label"] for r in _ours(secs)] == [
        "constant (vanilla SFT)",
        "KaFT (α=0.1, β=0.5)",
        "EAFT (eaft_alpha=0.1)",
        "DPO",
    ]
    secs = T.build_table(jobs_frame(losses), "12")
    assert [r["ref"] for r in _rows(secs[0]) if r["source"] == "paper"] == ["Tab. 12", "Tab. 12"]

    ren = _write(
        tmp_path / "ren",
        [
            _res(strategy=s, detection="icl", model="mistral_7b", dataset="ren_history", acc={"xiezhi_history": a})
            for s, a in (("self", 0.4), ("har", 0.47), ("inc", 0.33))
        ],
    )
    secs = T.build_table(jobs_frame(ren))
    assert secs[0].layout == "ren" and [r["id"] for r in _ours(secs)] == ["har", "inc", "self"]
    assert _rows(secs[0])[1]["xiezhi_history"] == 46.80

    # Ren et al. Exp-III: a ratio sweep lays out one row per r (INC / SELF jobs beside it are r = 0 / 1)
    rr = [_res(strategy="ren_ratio", ratio=r, detection="icl", acc=0.3 + r / 10) for r in (0.5, 0.25)]
    ratio = _write(tmp_path / "ren_ratio", [*rr, _res(strategy="inc", detection="icl", acc=0.2)])
    secs = T.build_table(jobs_frame(ratio))
    assert secs[0].layout == "ren_ratio" and [r["id"] for r in _ours(secs)] == ["0", "0.25", "0.5"]
    assert [r["label"] for r in _ours(secs)] == ["r = 0", "r = 0.25", "r = 0.5"]

    # Ren et al. Exp-II: INC with and without its contexts at training time
    ctx = [_res(strategy="inc", detection="icl", acc=a) for a in (0.3, 0.4)]
    ctx[1]["config"]["train"] = {"context": True}
    secs = T.build_table(jobs_frame(_write(tmp_path / "ren2", ctx)))
    assert secs[0].layout == "ren2" and [r["label"] for r in _ours(secs)] == [
        "Vanilla (INC)",
        "Contextualized (INC)",
    ]


def test_self_align_answer_sources_are_rows_of_their_own(tmp_path):
    def job(method, source, acc):
        r = _res(strategy="self_align", acc=acc, method=method)
        if source:
            r["config"]["strategy"]["answer_source"] = source
        return r

    root = _write(
        tmp_path / "sa",
        [
            job("self_align", "greedy", 0.6),
            job("self_align_majority", "majority", 0.5),
            job(None, "majority", 0.5),
            job("self_align", None, 0.4),
        ],
    )
    runs = jobs_frame(root)
    # older results (no answer_source) were the majority reading
    assert list(runs["method_id"]) == [
        "self_align",
        "self_align_majority",
        "self_align_majority",
        "self_align_majority",
    ]
    rows = {r["id"]: r for r in _ours(T.build_table(runs))}
    assert set(rows) == {"base", "self_align", "self_align_majority"} and rows["self_align"]["label"] == "Self-aligning"
    assert rows["self_align_majority"]["label"] == "Self-aligning (majority of samples)"


def test_alpha_beta_matrix(tmp_path):
    jobs = [
        _res(loss="kaft", alpha=a, beta=b, acc=0.5 + a / 10 + b / 100, model="qwen1_5_7b", seed=s)
        for a in (0.1, 0.5, 1.0)
        for b in (0.1, 0.5, 1.0)
        for s in (0, 1)
    ]
    secs = T.build_table(jobs_frame(_write(tmp_path / "s", jobs)))
    assert secs[0].layout == "13"
    ids = [r["id"] for r in _ours(secs)]
    assert ids[:3] == ["a0.1_b0.1", "a0.1_b0.5", "a0.1_b1"] and len(ids) == 9
    header, body = matrix(secs[0])
    assert header == ["α \\ β", "β = 0.1", "β = 0.5", "β = 1"]
    assert [line[0] for line in body] == ["α = 0.1", "α = 0.5", "α = 1"]
    assert body[0][2].endswith("(paper 65.25)")
    md = T.render(secs, "md")
    assert md.index("Fig. 4") < md.index("| Rewards |")


def test_latex_and_csv(main_sweep, tmp_path):
    assert T.main([str(main_sweep), "--table", "2", "--format", "latex", "--out", str(tmp_path / "t.tex")]) == 0
    tex = (tmp_path / "t.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex
    assert "KaFT (Ours) & 61.00 $\\pm$ 1.00" in tex and "$\\hookrightarrow$ paper" in tex
    assert T.main([str(main_sweep), "--table", "2", "--format", "csv", "--out", str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    kaft = [r for r in rows if r["row"] == "kaft"]
    assert [r["source"] for r in kaft] == ["ours", "paper"]
    assert float(kaft[0]["medqa"]) == pytest.approx(61.0) and float(kaft[0]["medqa_std"]) == pytest.approx(1.0)
    assert kaft[0]["n"] == "3" and float(kaft[1]["avg"]) == 55.96
    assert T.main([str(tmp_path / "none")]) == 1


def test_paper_file_is_consistent():
    recs = load_paper()
    tables = {r["table"] for r in recs}
    assert {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, "ren1"} <= tables
    for r in recs:  # the paper's Avg. is the mean of its benchmark columns (except the one marked doubtful)
        if r["avg"] is not None and r["columns"] and "avg" not in r["doubt_cols"]:
            assert r["avg"] == pytest.approx(statistics.fmean(r["values"].values()), abs=0.011), r
    t2 = {(r["model"], r["row"]): r for r in recs if r["table"] == 2}
    t12 = {(r["model"], r["row"]): r for r in recs if r["table"] == 12}
    for model in ("mistral_7b", "qwen1_5_7b", "llama3_8b", "llama3_3b"):  # cross-references inside the paper
        assert t12[(model, "constant")]["values"] == t2[(model, "vanilla")]["values"]
        assert t12[(model, "kaft")]["values"] == t2[(model, "kaft")]["values"]


def test_wandb_table_offline(main_sweep, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wbcache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wbconfig"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wbdata"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    secs = T.build_table(jobs_frame(main_sweep), "2")
    rows = T.flat_rows(secs)
    tab = T.log_table_to_wandb(rows, "table_2", init={"project": "kaft-test", "dir": str(tmp_path / "wb")})
    assert tab.columns[:4] == ["table", "model", "dataset", "row"] and len(tab.data) == len(rows)
    assert list((tmp_path / "wb").rglob("*.wandb")), "no offline run written"
    secs = T.log_sweep_tables(main_sweep, logger_cfg={"name": "wandb", "project": "kaft-test"})
    assert secs and (main_sweep / "paper_table.md").exists() and (main_sweep / "paper_table.csv").exists()
    assert list((main_sweep / "wandb").rglob("*.wandb"))


def test_figures_written(tmp_path):
    pytest.importorskip("matplotlib")
    from analysis import figures as F

    jobs = [
        _res(strategy="subset", subset=s, acc=a, seed=sd)
        for s, a in [("wrong", 0.2), ("right", 0.55), ("random", 0.54)]
        for sd in (0, 1)
    ]
    jobs += [
        _res(strategy="wrong_ratio", ratio=r, data_seed=ds, acc=0.5 + 0.05 * r + 0.01 * ds, model="mistral_7b")
        for r in (0.0, 0.5, 1.0)
        for ds in (0, 1, 2)
    ]
    jobs += [_res(loss=lo, acc=0.55, model="llama3_3b") for lo in ("constant", "auto_adapt", "kaft")]
    jobs += [
        _res(loss="kaft", alpha=a, beta=b, acc=0.5 + a / 10, model="qwen1_5_7b") for a in (0.1, 1.0) for b in (0.1, 0.5)
    ]
    jobs += [_res(strategy="none", acc=BASE, model="llama3_3b", hist=[1] * 10)]
    jobs.append(_res(loss="kaft", status="failed", model="qwen1_5_7b", alpha=1.0, beta=1.0))
    root = _write(tmp_path / "s", jobs)
    runs = jobs_frame(root)
    out = tmp_path / "figs"
    for fid in ("2a", "2b", "2c", "3", "4"):
        sub = runs
        if fid == "2b":
            sub = runs[runs["strategy"] == "subset"]
        elif fid == "2c":
            sub = runs[runs["strategy"] == "wrong_ratio"]
        elif fid == "3":
            sub = runs[runs["model"] == "llama3_3b"]
        elif fid == "4":
            sub = runs[runs["model"] == "qwen1_5_7b"]
        paths = F.make_figure(sub, fid, out)
        assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
        assert all(p.exists() and p.stat().st_size > 1000 for p in paths), fid
    assert F.main([str(root), "--figure", "2a", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "fig2a_score_distribution.png").stat().st_size > 1000
    assert F.main([str(tmp_path / "empty"), "--figure", "4", "--out", str(out)]) == 1


def test_failed_job_without_config_is_placed_by_its_overrides(tmp_path):
    failed = {
        "status": "failed",
        "error": "CUDA OOM",
        "config": None,
        "metrics": None,
        "overrides": ["method=kaft", "seed=1", "model=llama3_8b", "dataset=medqa"],
    }
    root = _write(tmp_path / "s", [_res(loss="kaft", acc=0.6), failed])
    kaft = [r for r in _ours(T.build_table(jobs_frame(root), "2")) if r["id"] == "kaft"][0]
    assert (kaft["n"], kaft["n_failed"], kaft["status"]) == (1, 1, "partial")


def test_ablation_switches_name_the_detector_and_alpha_splits_rows(tmp_path):
    """detection=no_both is `name: diversified` with both switches off: it must be its own Table 4 row; and a loss
    sweep over α (the mission sweep) gives one row per (loss, α), not replicates of one row."""
    det = []
    for switches, a in (
        ({}, 0.27),
        ({"diverse_query": False}, 0.39),
        ({"response_sampling": False}, 0.30),
        ({"diverse_query": False, "response_sampling": False}, 0.49),
    ):
        r = _res(strategy="wrong_only", acc=a)
        r["config"]["detection"].update(switches)
        det.append(r)
    det.append(_res(method="random_subset", strategy="subset", subset="random", acc=0.54))
    ours = _ours(T.build_table(jobs_frame(_write(tmp_path / "t4", det))))
    assert [r["id"] for r in ours] == ["random", "diversified", "no_diverse_query", "no_sampling", "no_both"]
    assert [round(r["avg"], 2) for r in ours[1:]] == [29.5, 41.5, 32.5, 51.5]

    mission = _write(
        tmp_path / "m", [_res(loss=lo, alpha=a, acc=0.5 + a / 10) for lo in ("kaft", "eaft") for a in (0.1, 0.5)]
    )
    secs = T.build_table(jobs_frame(mission))
    assert secs[0].layout == "losses"
    # results from before eaft's exponent had its own name: loss=eaft read it from alpha
    assert [(r["id"], r["n"]) for r in _ours(secs)] == [
        ("kaft (α=0.1, β=0.5)", 1),
        ("kaft (α=0.5, β=0.5)", 1),
        ("eaft (eaft_alpha=0.1)", 1),
        ("eaft (eaft_alpha=0.5)", 1),
    ]
    assert "KaFT (α=0.5, β=0.5)" in T.render(secs, "md") and "EAFT (eaft_alpha=0.5)" in T.render(secs, "md")

    # today's results: each loss's config holds what it used (eaft's own default 1.0 when no alpha was given)
    def used(lo, a):
        job = _res(loss=lo, alpha=None, beta=None, acc=0.5 + (a or 0) / 10)
        job["config"]["loss"] = (
            {"name": "kaft", "alpha": a, "beta": 0.5}
            if lo == "kaft"
            else {"name": "eaft", "eaft_alpha": 1.0 if a is None else a}
        )
        return job

    now = _write(tmp_path / "now", [used("kaft", 0.1), used("kaft", 0.5), used("eaft", None), used("eaft", None)])
    ids = [(r["id"], r["n"]) for r in _ours(T.build_table(jobs_frame(now)))]
    assert ids == [("kaft (α=0.1, β=0.5)", 1), ("kaft (α=0.5, β=0.5)", 1), ("eaft (eaft_alpha=1)", 1)]
    assert jobs_frame(now)["eaft_alpha"][2] == 1.0


def test_methods_layouts_and_loss_labels_come_from_config_and_registry(tmp_path):
    """Method rows are read from conf/method/*.yaml, and a loss the analysis has never heard of gets its label and
    its swept setting from the loss registry."""
    from pathlib import Path

    from analysis.jobs import CONF, methods
    from kaft.losses import LOSSES, Loss

    ms = methods()
    assert set(ms) == {p.stem for p in Path(CONF, "method").glob("*.yaml")}
    rnd = ms["random_subset"]
    assert (rnd.strategy, rnd.loss, rnd.settings) == ("subset", "constant", {"subset": "random"})
    assert Lay.layout_of("11").name == "4" and Lay.layout_of("14").name == "main" and "auto" in Lay.table_choices()

    class Toy(Loss):
        label = "Toy objective"
        reads = ("beta",)

    LOSSES.register("toy_test", Toy)
    try:
        root = _write(
            tmp_path / "toy",
            [_res(loss="toy_test", beta=b, acc=0.5 + b / 10) for b in (0.1, 0.5)] + [_res(loss="kaft", acc=0.6)],
        )
        ours = _ours(T.build_table(jobs_frame(root), "losses"))
    finally:
        LOSSES.unregister("toy_test")
    assert [(r["id"], r["label"]) for r in ours] == [
        ("kaft (α=0.1, β=0.5)", "KaFT (α=0.1, β=0.5)"),
        ("toy_test (β=0.1)", "Toy objective (β=0.1)"),
        ("toy_test (β=0.5)", "Toy objective (β=0.5)"),
    ]
