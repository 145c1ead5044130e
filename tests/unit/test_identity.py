"""kaft.identity: the config part holds every key that reaches a stage (seed, lr, the method label) and none of the
keys that cannot change a result; differences name what changed; a job is reused only on an equal identity, and an
unreadable, failed or interrupted results.json is re-run with the reason logged. Real configs (composed from conf/)
over a tiny saved model and local data: nothing is mocked."""

from __future__ import annotations

import json
import logging

import pytest

from kaft import identity, stages
from kaft.sweep import plan, preflight


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import write_tiny_job

    return write_tiny_job(tmp_path_factory.mktemp("identity"))


def _cfg(tiny, *args):
    """The task config kaft.run's job function would receive for these overrides."""
    base = [
        "model=local",
        f"model.path={tiny / 'model'}",
        "dataset=local",
        f"dataset.train.path={tiny / 'train.jsonl'}",
        f"dataset.eval.test.path={tiny / 'test.jsonl'}",
        f"cache_dir={tiny / 'cache'}",
        "logger=none",
    ]
    ((_, _, cfg),) = plan.compose_jobs([*base, *args], False)
    return preflight.task_config(cfg)


def _done(run_dir, ident, **extra):
    run_dir.mkdir(parents=True, exist_ok=True)
    res = {"status": "done", "metrics": {"average": 0.5, "benchmarks": {}}, "identity": ident, **extra}
    (run_dir / "results.json").write_text(json.dumps(res))
    return res


def test_config_part_keeps_what_reaches_a_stage_only(tiny):
    part = identity.config_part(_cfg(tiny, "train.save_steps=3", "progress=false", "device=cpu"), "kaft")
    assert part["seed"] == 0 and part["testbed"]["seed"] == 0 and part["train"]["lr"] > 0
    assert part["method"] == "kaft" and part["loss"]["name"] == "kaft"
    assert not set(identity.NOT_IN_IDENTITY) & set(part)
    assert "save_steps" not in part["train"] and "save_total_limit" not in part["train"]
    # settings that cannot change a number leave the part as it is; anything else changes it
    same = identity.config_part(_cfg(tiny, "train.save_steps=7", "progress=true", "force=true"), "kaft")
    assert same == part
    assert identity.config_part(_cfg(tiny, "seed=1"), "kaft") != part


def test_differences_name_what_changed(tiny):
    a = identity.make(identity.config_part(_cfg(tiny), None), {"train": "f1", "test": "f2"}, "local-abc")
    assert identity.differences(a, a) == []
    b = identity.make(
        identity.config_part(_cfg(tiny, "seed=1", "loss=constant", "train.lr=0.01"), None),
        {"train": "f9", "test": "f2"},
        "local-xyz",
    )
    diffs = identity.differences(a, b)
    assert "seed 0 -> 1" in diffs and "loss kaft -> constant" in diffs
    assert any(d.startswith("train.lr ") and d.endswith(" -> 0.01") for d in diffs)
    assert not [d for d in diffs if d.startswith("loss.")]  # a renamed group is one entry
    assert "data fingerprint of train changed" in diffs and not [d for d in diffs if " test " in d]
    assert any(d.startswith("model identity local-abc -> local-xyz") for d in diffs)
    assert identity.differences(a, b, parts=("data",)) == ["data fingerprint of train changed"]
    assert identity.differences(None, b) == ["no identity recorded (an earlier kaft wrote it)"]
    assert identity.summary([str(i) for i in range(6)]) == "0, 1, 2, 3 and 2 more"
    assert a["sha256"] != b["sha256"] and len(a["sha256"]) == 64


def test_reused_only_on_an_equal_identity(tiny, tmp_path):
    cfg = _cfg(tiny)
    now = identity.of_job(cfg, None)
    assert set(now["parts"]["data"]) == {"train", "test"}
    assert now["parts"]["model"] == stages.stage_model(cfg)[1]  # the model key the job's stages use
    saved = _done(tmp_path / "same", now)
    assert identity.reusable(tmp_path / "same", cfg, None) == saved
    other = identity.of_job(_cfg(tiny, "seed=1"), None)
    _done(tmp_path / "other", other)
    with pytest.raises(identity.RerunError, match=r"holds the results of another run: seed 1 -> 0.*force=true"):
        identity.reusable(tmp_path / "other", cfg, None)
    with pytest.raises(identity.RerunError, match="hydra.sweep.dir"):
        identity.reusable(tmp_path / "other", cfg, None, multirun=True)
    assert identity.reusable(tmp_path / "other", _cfg(tiny, "force=true"), None) is None
    _done(tmp_path / "old", None)  # written by an earlier kaft: no identity
    with pytest.raises(identity.RerunError, match="no identity recorded"):
        identity.reusable(tmp_path / "old", cfg, None)


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"status": "done", "metr', "re-running: the previous results.json: "),
        ('{"status": "failed", "metrics": null, "error": "boom"}', "re-running: the previous run failed (boom)"),
        ('{"status": "interrupted", "metrics": null}', "re-running: the previous run interrupted"),
        ("[1, 2]", "re-running: the previous results.json: not a JSON object"),
    ],
)
def test_unusable_results_rerun_with_a_reason(tiny, tmp_path, caplog, content, reason):
    (tmp_path / "results.json").write_text(content)
    with caplog.at_level(logging.INFO, logger="kaft"):
        assert identity.reusable(tmp_path, _cfg(tiny), None) is None
    assert reason in caplog.text


def test_stale_compares_the_recorded_config_with_hydras(tiny, tmp_path):
    """A run dir whose .hydra/config.yaml another command rewrote (an earlier kaft did) is stale."""
    from omegaconf import OmegaConf

    cfg = _cfg(tiny)
    res = _done(tmp_path, identity.make(identity.config_part(cfg, None), {}, "m"))
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices: {}\n")
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    assert identity.stale(res, tmp_path) is None
    OmegaConf.save(_cfg(tiny, "seed=1"), tmp_path / ".hydra" / "config.yaml")
    assert identity.stale(res, tmp_path) == "seed 0 -> 1, testbed.seed 0 -> 1"
    legacy = {k: v for k, v in res.items() if k != "identity"}  # an earlier kaft's: its config is compared
    legacy["config"] = {**OmegaConf.to_container(cfg, resolve=True), "method": None}
    assert identity.stale(legacy, tmp_path) == "seed 0 -> 1, testbed.seed 0 -> 1"
