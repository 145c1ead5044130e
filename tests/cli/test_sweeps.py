"""Every sweep file in sweeps/ runs end to end through the real CLI (``python -m kaft.run -m +sweeps=NAME``) at the
tiniest settings: a tiny random Llama saved to disk (model=local) and 16 local training rows, so this checks the
plumbing of each paper experiment (every job finishes, the sweep-end callback lays the jobs out in the paper's
table), not its numbers; the testbed numbers come from ``python -m analysis.report`` (analysis/REPORT.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_tiny_job

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# the layout analysis.table picks for each sweep on its own (the paper table it reproduces)
LAYOUT = {
    "table2_main": "main",
    "table6_halueval": "main",
    "table4_detection": "4",
    "table5_partitions": "5",
    "table9_subsets": "9",
    "table10_wrong_ratio": "10",
    "table12_rewards": "12",
    "table13_alpha_beta": "13",
    "losses": "losses",
    "ren_har_inc_self": "ren",
    "ren_ratio": "ren_ratio",
    "ren_contextualized": "ren2",
    "table3_ood": "main",
    "table7_domains": "main",
    "kaft_vs_dropping": "main",  # one alpha and one detector at smoke size (EXTRA): the main table's rows
}
COLORS = ["red", "green", "blue", "yellow"]


def _medqa_rows(n):  # MedQA's hub row format (answer_idx a letter), for dataset=medqa_xiezhi's training set
    return [{"question": f"What is Tarn {i} ?", "options": COLORS, "answer_idx": "ABCD"[i % 4]} for i in range(n)]


def _xiezhi_rows(n):  # Ren et al.'s Xiezhi release: options one per line, the answer as its text
    return [
        {
            "question": f"What is Tarn {i} ?",
            "options": "\n".join(COLORS),
            "answer": COLORS[(i + 1) % 4],
            "labels": ["x"],
        }
        for i in range(n)
    ]


# sweeps whose data set is the point run on their own dataset configs, with local files in the sources' formats
# ($KAFT_DATA_DIR/xiezhi/ for Ren et al.'s Xiezhi files; MedQA's training set from a local file instead of the hub)
OWN_DATA = {
    "table3_ood": lambda root: [
        "++dataset.train.source=local",
        f"++dataset.train.path={root / 'medqa.jsonl'}",
        "method=base,kaft",
    ],
    "table7_domains": lambda root: ["method=base,kaft"],
}  # 2 methods (table3 1 training set, table7 3 domains): every data set config, fewer jobs; table2 runs every method
# a random tiny model answers nothing with confidence > 0.5: Ren et al.'s filter would leave no item (unit-tested in
# test_strategy.py), so the plumbing runs with it off
EXTRA = {
    "ren_har_inc_self": ["++strategy.confident_only=false"],
    "ren_ratio": ["++strategy.confident_only=false", "strategy.ratio=0,0.5,1"],  # both ends (inc, self) and between
    # the tiny local rows have no knowledge column: the plumbing maps each question as its own context
    "ren_contextualized": [
        "++strategy.confident_only=false",
        "~dataset.train.context",
        "++dataset.train.fields.context=question",
    ],
    # issue 24's grid (64 jobs) cut to one purity, one detector and one alpha: its 5 arms x 2 tested shares run
    "kaft_vs_dropping": ["++testbed.world.contradict_keep=1.0", "detection=diversified", "alpha=0.1"],
    # the grids' corners and a middle: each axis still varies, so the layout and its matrix / mean over data seeds
    # are the same code; every job of the full grids still passes the preflight checks (CUT; 9 -> 4 and 15 -> 6 jobs)
    "table13_alpha_beta": ["alpha=0.1,1.0", "beta=0.1,1.0"],
    "table10_wrong_ratio": ["strategy.ratio=0.0,0.5,1.0", "strategy.data_seed=0,1"],
}
# composed only (tests/cli/test_config.py): SMA's tables and sweeps/responses (its DPO row) sample 8 free-form
# responses per item on the free-form testbed (minutes on 2 cores); their free-form DPO path runs end to end in
# tests/cli/test_sma_freeform.py
COMPOSE_ONLY = {"sma_table5", "sma_table6", "responses"}
# sweeps/mission.yaml (the README's 2x2) runs end to end in tests/cli/test_pipeline.py's basic-launcher 2x2, with
# this test's assertions (summary, paper table, layout) and more: not run a second time here
ELSEWHERE = {"mission"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_tiny_job(tmp_path_factory.mktemp("sweeps"), n_train=16)
    (root / "medqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _medqa_rows(16)))
    (root / "data" / "xiezhi").mkdir(parents=True)
    for domain in ("history", "engineering", "law"):
        (root / "data" / "xiezhi" / f"{domain}_train.json").write_text(json.dumps(_xiezhi_rows(16)))
        (root / "data" / "xiezhi" / f"{domain}_test.json").write_text(json.dumps(_xiezhi_rows(6)))
    return root


def _sweep(root: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "KAFT_DATA_DIR": str(root / "data"),
    }
    data = (
        OWN_DATA[name](root)
        if name in OWN_DATA
        else [
            "dataset=local",
            f"dataset.train.path={root / 'train.jsonl'}",
            f"dataset.eval.test.path={root / 'test.jsonl'}",
        ]
    )
    args = [
        "-m",
        f"+sweeps={name}",
        "model=local",
        f"model.path={root / 'model'}",
        *data,
        "++detection.num_orders=2",
        "++detection.num_samples=2",
        "detection.shots=1",
        "++detection.max_new_tokens=1",
        "train.batch_size=8",
        "train.max_length=128",
        "train.epochs=1",
        "evaluation.batch_size=8",
        "progress=false",
        f"hydra.sweep.dir={root / name}",
        *EXTRA.get(name, []),
        *extra,
    ]
    # ++: detection=icl (Ren et al.) has no orders or samples to set
    return subprocess.run(
        [sys.executable, "-m", "kaft.run", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SWEEPS if n not in ELSEWHERE])
def test_every_sweep_runs(setup, name):
    if name in COMPOSE_ONLY:
        pytest.skip(f"sweeps/{name}.yaml is composed only (COMPOSE_ONLY): free-form sampling on the testbed is slow")
    # one sweep logs to W&B (offline), to check the sweep-end table reaches it; the rest skip W&B to stay fast
    logger = "logger=wandb" if name == "table12_rewards" else "logger=none"
    out = _sweep(setup, name, logger)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    sweep = setup / name
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert len(results) >= 2 and all(r["status"] == "done" for r in results)
    assert (sweep / "summary.md").exists()
    table = (sweep / "paper_table.md").read_text()  # written by the sweep-end callback
    assert "paper_table.md" in out.stdout and f"{LAYOUT[name]} layout" in out.stdout
    assert table.count("\n| ") >= 3  # header + at least two rows
    if name in OWN_DATA:  # the paper's data set configs: Xiezhi's three test sets, each training set of Table 7
        assert {tuple(r["data"]["n_eval"]) for r in results} == {("xiezhi_history", "xiezhi_engineering", "xiezhi_law")}
        want = {"medqa_xiezhi"} if name == "table3_ood" else {"xiezhi_history", "xiezhi_engineering", "xiezhi_law"}
        assert {r["config"]["dataset"]["name"] for r in results} == want and "History" in table
    if logger == "logger=wandb":
        assert "logged to W&B as table_12" in out.stdout
        assert list((sweep / "wandb").glob("offline-run-*")), "the sweep's table run was not written"


# the sweeps the run above cuts to fewer jobs (EXTRA / OWN_DATA) and how many jobs each file's full grid has
CUT = {"table13_alpha_beta": 9, "table10_wrong_ratio": 15, "table3_ood": 5, "ren_ratio": 5}


@pytest.mark.slow  # Hydra composes each job: about a second a job on 2 cores
@pytest.mark.parametrize("name", sorted(CUT))
def test_every_job_of_a_cut_sweep_passes_the_preflight_checks(name):
    """What the smoke run leaves out of a cut grid is still composed and checked, in process: every job of the
    file passes the checks kaft.run makes before any model loads (schema, method, model config)."""
    from kaft.sweep import plan, preflight

    jobs = plan.compose_jobs([f"+sweeps={name}", "logger=none"], True)
    assert len(jobs) == CUT[name]
    for _, _, cfg in jobs:
        preflight.check_job_config(cfg)
    assert preflight.sweep_problems(jobs) is None
