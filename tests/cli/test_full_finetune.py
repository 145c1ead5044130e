"""``train=full`` through the real CLI on the tiny job (model=local): constant, kaft, eaft and dpo train every
parameter and evaluate; a re-run whose training is cached but whose evaluation is not loads the saved model (not an
adapter) and gives the same metrics. Subprocess jobs: slow, in plain pytest, not the quick loop."""

import json
import shutil

import pytest
from helpers import write_tiny_job
from test_pipeline import _kaft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_job(tmp_path_factory.mktemp("full"), test_format="csv")


def test_full_fine_tuning_runs_for_every_kind_of_loss_and_reloads_the_saved_model(setup):
    sweep = "sweep_full"
    _kaft(setup, "-m", "train=full", "loss=constant,kaft,eaft,dpo", f"hydra.sweep.dir={sweep}")
    res = {
        r["config"]["loss"]["name"]: r
        for r in (json.loads(p.read_text()) for p in (setup / sweep).rglob("results.json"))
    }
    assert set(res) == {"constant", "kaft", "eaft", "dpo"}
    assert all(r["status"] == "done" and r["config"]["train"]["finetune"] == "full" for r in res.values())
    assert len({r["cache_keys"]["train"] for r in res.values()}) == 4
    for r in res.values():
        saved = setup / "cache" / "train" / r["cache_keys"]["train"]
        assert (saved / "config.json").is_file() and not (saved / "adapter_config.json").exists()
        assert (saved / "tokenizer_config.json").is_file()

    first = res["kaft"]
    for entry in (setup / "cache" / "evaluate").iterdir():  # drop the evaluations: the trained model is cached
        shutil.rmtree(entry)
    out = _kaft(setup, "train=full", "loss=kaft", "hydra.run.dir=again")
    again = json.loads((setup / "again" / "results.json").read_text())
    assert again["cache"]["train"] == "hit" and again["cache"]["evaluate"] == "miss"
    assert again["cache_keys"]["train"] == first["cache_keys"]["train"]
    assert again["metrics"]["benchmarks"] == first["metrics"]["benchmarks"]
    assert "Traceback" not in out.stderr
