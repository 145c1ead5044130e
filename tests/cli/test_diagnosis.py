"""The diagnosis on the embedded testbed through the real CLI (issue 22 items 1 and 3): a smoke-size vanilla SFT job
with ``diagnosis.enabled=true`` writes a consistent ``diagnosis`` block, prints its line, exports its per-item
columns, re-uses its cached artifact; and the unlearned set is dominated by the planted contradicting and never-seen
(``unseen``) facts. Marked slow and testbed: about 15 s on an idle 2-core machine once the testbed model is cached."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.testbed]

ARGS = ["experiment=smoke", "method=vanilla", "diagnosis.enabled=true", "logger=none", "progress=false"]
ROW_KEYS = {
    "index", "kind", "gold", "pass_rate", "bon_pred", "bon_correct", "unlearned", "train_correct", "base_correct",
    "base_conf", "base_pred", "base_high_conf_error", "js", "ren_consistency", "ren_kl",
}  # fmt: skip


def _kaft(module, args, cwd):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft"),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    out = _kaft("kaft.run", [*ARGS, "hydra.run.dir=run"], root)
    return root, json.loads((root / "run" / "results.json").read_text()), out.stdout


def test_the_block_is_consistent(job):
    _, res, stdout = job
    d = res["diagnosis"]
    rows = d["items"]
    assert len(rows) == d["n_items"] == res["data"]["n_train"] and [r["index"] for r in rows] == list(range(len(rows)))
    assert all(ROW_KEYS <= set(r) for r in rows)
    assert d["unlearned"] == sum(r["unlearned"] for r in rows) == sum(v["unlearned"] for v in d["kinds"].values())
    assert d["unlearned_rate"] == pytest.approx(d["unlearned"] / len(rows))
    assert all(r["unlearned"] == (r["pass_rate"] < d["settings"]["tau"]) for r in rows)
    assert all(r["bon_correct"] == (r["bon_pred"] == r["gold"]) and 0 <= r["js"] <= 0.6932 for r in rows)
    assert all(r["base_high_conf_error"] <= (not r["base_correct"]) for r in rows)
    assert d["train_accuracy"] == pytest.approx(sum(r["train_correct"] for r in rows) / len(rows))
    assert set(d["unlearned_by_kind"]) == {"known", "latent", "unseen", "contradict"}
    assert sum(d["unlearned_share_by_kind"].values()) == pytest.approx(1.0)
    assert res["cache"]["diagnose"] in ("hit", "miss")
    assert "diagnose" in res["timings"] and res["cache_keys"]["diagnose"]
    assert f"diagnosis: unlearned {d['unlearned_rate']:.3f}" in stdout


def test_unlearned_set_is_dominated_by_contradicting_and_unseen_items(job):
    """Issue 22 item 3: after vanilla SFT the planted conflicts (contradict: the label contradicts what the model
    was pretrained on) and missing knowledge (unseen: never in pretraining) are what stays unlearned."""
    d = job[1]["diagnosis"]
    rate, share = d["unlearned_by_kind"], d["unlearned_share_by_kind"]
    assert share["contradict"] + share["unseen"] > 0.6, d["kinds"]  # they are 30 % of the training set
    assert min(rate["contradict"], rate["unseen"]) > max(rate["known"], rate["latent"]), d["kinds"]


def test_rerun_hits_the_cache_and_export_carries_the_columns(job):
    root, res, _ = job
    again = _kaft("kaft.run", [*ARGS, "hydra.run.dir=again"], root)
    res2 = json.loads((root / "again" / "results.json").read_text())
    assert res2["cache"]["diagnose"] == "hit" and res2["diagnosis"]["items"] == res["diagnosis"]["items"]
    assert "diagnosis: unlearned" in again.stdout
    _kaft("kaft.export", [str(root / "run"), "--out", str(root / "export")], root)
    rows = [json.loads(line) for line in (root / "export" / "train.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in res["diagnosis"]["items"]}
    assert all(r["diag_pass_rate"] == by_id[r["id"]]["pass_rate"] for r in rows)
    assert all(r["diag_unlearned"] == by_id[r["id"]]["unlearned"] for r in rows)
