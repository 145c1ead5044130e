"""Bad configs through the real CLI (``python -m kaft.run``), checked by kaft.schema.check_config before anything is
built: each ends in ONE ``kaft: error:`` line naming the key, a non-zero exit, no traceback, no model loaded and
nothing in the cache dir (the helpers of test_bad_input.py). Warnings are one ``kaft: warning:`` line each."""

from __future__ import annotations

import pytest
from test_bad_input import _check, _run, _write, good  # noqa: F401  (good: the shared model + data fixture)

CASES = {
    # item 5: unknown keys are errors, with the nearest key
    "typo_key": (["+train.learning_rate=0.5"], "train.learning_rate is not a train setting; did you mean train.lr?"),
    "typo_detection_key": (["+detection.num_order=3"], "did you mean detection.num_orders?"),
    "typo_top_level_key": (["+sed=1"], "sed is not a kaft setting; did you mean seed?"),
    # item 6: late failures now fail first
    "train_three_bad": (
        ["train.lr_scheduler=cosine_typo", "train.lora.r=0", "train.warmup_ratio=3"],
        "train.lr_scheduler must be one of ['cosine', 'linear', 'constant', 'constant_with_warmup'], got 'cosine_typo'",
    ),
    "eval_limit_zero": (["evaluation.limit=0"], "evaluation.limit must be an integer >= 1, got 0"),
    "eval_batch_size_zero": (["evaluation.batch_size=0"], "evaluation.batch_size must be an integer >= 1, got 0"),
    "seed_text": (["seed=abc"], "seed must be an integer >= 0, got 'abc'"),
    "seed_negative": (["seed=-1"], "seed must be an integer >= 0, got -1"),
    "device_unknown": (["device=gpu"], "device must be null (cuda if available, else cpu), cpu, cuda, cuda:N or mps"),
    # issue 20 item 2: renamed keys name their new name (with and without +)
    "old_lora_alpha": (["train.lora.alpha=16"], "train.lora.alpha is now train.lora.lora_alpha"),
    "old_lora_alpha_appended": (["+train.lora.alpha=16"], "train.lora.alpha is now train.lora.lora_alpha"),
    "old_eaft_k": (["loss=eaft", "loss.k=5"], "loss.k is now loss.top_k"),
    # item 3: a method= row is what ran
    "method_base_trained": (
        ["method=base", "strategy=full"],
        "method=base means strategy=none loss=constant, but the command line chose strategy=full",
    ),
    "method_no_conflict_other_loss": (
        ["method=no_conflict", "loss=kaft"],
        "method=no_conflict means strategy=no_conflict loss=constant, but the command line chose loss=kaft",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_line_before_anything_is_built(tmp_path, good, case):  # noqa: F811
    args, message = CASES[case]
    out, cache = _run(tmp_path, good, args)
    _check(out, cache, message, tmp_path)


def test_bad_config_in_a_sweep_is_one_line_per_job(tmp_path, good):  # noqa: F811
    """In a multirun each job is refused by the same check, before its data or model (the sweep preflight reports
    them all before the first job; this is the check it calls)."""
    out, cache = _run(tmp_path, good, ["evaluation.limit=0,-1"], multirun=True)
    errors = [line for line in out.stderr.splitlines() if line.startswith("kaft: error:")]
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert errors and all("evaluation.limit must be an integer >= 1" in e for e in errors), out.stderr[-2000:]
    assert "loaded model" not in out.stdout + out.stderr
    assert not (cache.is_dir() and any(cache.iterdir()))


@pytest.mark.parametrize(
    "args, warning",
    [
        (["loss=constant", "alpha=0.5"], "alpha=0.5 is not read by loss=constant"),
        (["strategy=none", "loss=dpo"], "strategy=none: nothing is trained, loss=dpo is not used"),
        (["train.lr=1e6"], "train.lr=1e+06 is above 1"),
    ],
)
def test_settings_nothing_reads_warn_in_one_line(tmp_path, good, args, warning):  # noqa: F811
    """A legal config whose setting changes nothing: one warning line, printed before the data loads (an empty
    training file then stops the job, so nothing trains here)."""
    out, cache = _run(tmp_path, good, args, train=_write(tmp_path, "train.jsonl", ""))
    warnings = [line for line in out.stderr.splitlines() if line.startswith("kaft: warning:")]
    assert len(warnings) == 1 and warning in warnings[0], out.stderr[-2000:]
    _check(out, cache, "train.jsonl: no rows", tmp_path)
