"""``detection=generative`` through the real CLI on the testbed's free-form training set: with ``verifier=exact`` and
``verifier=llm_judge`` (the job's own testbed model as SMA's judge) the job runs end to end, records responses and
verdicts, and a re-run reuses the detection from the cache without loading a model. Bad settings stop in one line.

Training stays off here (``method=base``: strategy none): training on free-form items (``train.target``) is built on
another branch; on this one the free-form items reach detection, partition and evaluation only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.testbed]

BASE = [
    "dataset=testbed_freeform",
    "detection=generative",
    "method=base",
    "experiment=smoke",
    "logger=none",
    "progress=false",
    "+dataset.train.limit=24",
    "detection.max_response_tokens=4",
]


def _kaft(args, cwd: Path, ok: bool = True):
    env = {
        **os.environ,
        "KAFT_CACHE_DIR": os.environ.get("KAFT_CACHE_DIR") or str(Path.home() / ".cache" / "kaft"),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *BASE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _records(res: dict) -> list[dict]:
    cache = Path(os.environ.get("KAFT_CACHE_DIR") or Path.home() / ".cache" / "kaft")
    path = cache / "detect" / res["cache_keys"]["detect"] / "scores.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("verifier", ["exact", "llm_judge"])
def test_generative_detection_runs_end_to_end_and_is_cached(tmp_path, verifier):
    more = [f"verifier={verifier}", *(["verifier.max_new_tokens=8"] if verifier == "llm_judge" else [])]
    _kaft([*more, "hydra.run.dir=run"], tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "done" and res["config"]["verifier"]["name"] == verifier
    assert res["config"]["detection"]["name"] == "generative"
    records = _records(res)
    assert len(records) == 24
    for r in records:
        flat = [v for per in r["verdicts"] for v in per]
        assert [len(per) for per in r["responses"]] == [2]  # No = 1 (no paraphrases), Nr = 2 (experiment=smoke)
        assert r["unparsed"] == sum(v is None for v in flat) and r["n_judged"] == len(flat) - r["unparsed"]
        judged = [v for v in flat if v is not None]
        assert r["score"] == (sum(judged) / len(judged) if judged else 0.0)
    if verifier == "exact":
        assert res["detection"]["unparsed_answers"] == 0
    else:  # the judge's unparseable outputs are counted, out of the 48 responses
        assert res["detection"]["unparsed_answers"] == sum(r["unparsed"] for r in records) <= 48
        assert 0 <= res["detection"]["unparsed_rate"] <= 1

    again = _kaft([*more, "hydra.run.dir=run2"], tmp_path)
    res2 = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert res2["cache"]["detect"] == "hit" and res2["cache_keys"]["detect"] == res["cache_keys"]["detect"]
    assert "loaded model" not in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["detection.estimator=exact"], "detection.estimator=exact does not apply to detection=generative"),
        (["verifier=llm_judge", "verifier.language=fr"], "verifier.language must be one of ['en', 'zh'], got 'fr'"),
        (["+verifier.model=x"], "verifier.model is not a verifier setting"),
    ],
)
def test_bad_generative_settings_stop_in_one_line(tmp_path, override, message):
    out = _kaft([*override, "hydra.run.dir=bad"], tmp_path, ok=False)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("kaft: error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "loaded model" not in out.stdout + out.stderr and not (tmp_path / "bad" / "results.json").exists()


def test_generative_detection_needs_freeform_data(tmp_path):
    out = _kaft(["dataset=testbed", "hydra.run.dir=bad"], tmp_path, ok=False)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("kaft: error:")]
    assert len(lines) == 1 and "detection=generative needs free-form training data" in lines[0], out.stderr[-2000:]
