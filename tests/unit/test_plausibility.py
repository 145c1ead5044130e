"""kaft.plausibility: the longest prompt each stage builds (checked against the stages' own prompt builders, over
every item), the two length warnings, the benchmark/training overlap warnings and the model's context read without
its weights (a saved directory's config.json, the testbed's preview without a build)."""

from __future__ import annotations

import json

import pytest
from helpers import make_model, make_tokenizer

from kaft import plausibility as P
from kaft.data import MCItem
from kaft.detection import build_queries, detector_for
from kaft.prompts import DEFAULT_INSTRUCTION, answer_text, format_question
from kaft.train.examples import encode_example

COLORS, ANIMALS = ["red", "green", "blue", "yellow"], ["cat", "dog", "fox", "owl"]


def _items(n: int = 10, long_at: int | None = None, words: int = 30) -> list[MCItem]:
    """Questions of growing length (item ``long_at`` much longer than the rest)."""
    out = []
    for i in range(n):
        pad = " ".join(["Melk"] * (words if i == long_at else i))
        out.append(
            MCItem(
                id=f"q{i}",
                question=f"What is the capital of Zorvia {pad} ?",
                options=list(COLORS if i % 2 else ANIMALS),
                answer=i % 4,
                domain="geography",
            )
        )
    return out


def _cfg(shots: int = 2, max_length: int = 2048, seed: int = 0, limit=None) -> dict:
    return {
        "seed": seed,
        "dataset": {"domain": "general", "instruction": None},
        "detection": {"name": "diversified", "shots": shots, "num_orders": 2, "num_samples": 2},
        "train": {"max_length": max_length},
        "evaluation": {"limit": limit},
    }


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=True)


# ----------------------------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("long_at", [None, 0, 3, 9])
def test_longest_prompts_are_those_the_stages_build(tok, seed, long_at):
    """The shortcut (longest questions + the demonstrations' items) finds the longest of ALL detection prompts, and
    the training length is encode_example's, whichever item is longest and wherever the demonstrations fall."""
    train, cfg = _items(long_at=long_at), _cfg(seed=seed)
    evals = {"test": _items(5, long_at=2, words=12)}
    got = P.prompt_lengths(cfg, train, evals, tok)
    lay = detector_for(cfg["detection"]).layout()
    queries = build_queries(train, 1, lay.shots, seed, "general", None, lay.prompt, lay.order_scheme)
    det = [len(tok(q.prompt)["input_ids"]) for q in queries]
    assert got["detection"]["tokens"] == max(det)
    assert got["detection"]["id"] == train[det.index(max(det))].id and got["detection"]["shots"] == 2
    enc = [
        len(
            encode_example(
                tok,
                format_question(it.question, it.options, it.domain, DEFAULT_INSTRUCTION),
                answer_text(it.answer),
                10**6,
            )[0]
        )
        for it in train
    ]
    assert got["train"]["tokens"] == max(enc) and got["train"]["n_over"] == 0 and got["train"]["cut"] is None
    ev = [
        len(
            tok(format_question(it.question, it.options, it.domain, DEFAULT_INSTRUCTION) + answer_text(it.answer))[
                "input_ids"
            ]
        )
        for it in evals["test"]
    ]
    assert got["evaluation"] == {"tokens": max(ev), "id": "q2", "benchmark": "test"}


def test_evaluation_limit_and_own_prompt(tok):
    """Only the first ``evaluation.limit`` items are evaluated; a benchmark's own prompt is what is measured."""
    from kaft.eval_tasks import PROMPT

    items = _items(6, long_at=5, words=40)
    assert P.prompt_lengths(_cfg(limit=5), [], {"b": items}, tok)["evaluation"]["id"] == "q4"
    own = [MCItem(**{**it.to_dict(), "meta": {PROMPT: "Answer:"}}) for it in items]
    assert P.prompt_lengths(_cfg(), [], {"b": own}, tok)["evaluation"]["tokens"] == len(tok("Answer: A")["input_ids"])


def test_truncation_names_the_part_kaft_cuts(tok):
    """Over train.max_length: the count of examples over it, and which part of the prompt encode_example drops
    (checked against encode_example's own cut: what is kept starts at the question line)."""
    train = _items(long_at=4)
    it = train[4]
    prompt = format_question(it.question, it.options, it.domain, DEFAULT_INSTRUCTION)
    full = encode_example(tok, prompt, answer_text(it.answer), 10**6)[0]
    head = len(tok(prompt[: prompt.index("\nQuestion: ")], add_special_tokens=False)["input_ids"])
    max_len = len(full) - head
    kept = encode_example(tok, prompt, answer_text(it.answer), max_len)[0]
    rest = tok(prompt[prompt.index("\nQuestion: ") :] + answer_text(it.answer), add_special_tokens=False)["input_ids"]
    assert kept[1:] == rest  # <s> + everything from "Question:" on: exactly the instruction line was cut
    lengths = P.prompt_lengths(_cfg(max_length=max_len), train, {}, tok)
    assert lengths["train"]["cut"] == "the instruction line"
    n_over = sum(
        len(
            encode_example(
                tok, format_question(x.question, x.options, x.domain, DEFAULT_INSTRUCTION), answer_text(x.answer), 10**6
            )[0]
        )
        > max_len
        for x in train
    )
    lines = P.length_warnings(_cfg(max_length=max_len), lengths, context_len=4096)
    assert (
        len(lines) == 1 and f"{n_over} of 10 training examples are longer than train.max_length={max_len}" in lines[0]
    )
    assert "(the longest loses the instruction line)" in lines[0] and "context is 4,096" in lines[0]
    deeper = P.prompt_lengths(_cfg(max_length=max_len - 3), train, {}, tok)["train"]["cut"]
    assert deeper == "the instruction line and the first 3 tokens of the question"


def test_context_warning_is_one_line_for_every_stage(tok):
    train = _items(long_at=4)
    lengths = P.prompt_lengths(_cfg(), train, {"test": train[:3]}, tok)
    det, tr = lengths["detection"]["tokens"], lengths["train"]["tokens"]
    assert det > tr  # two demonstrations make detection's prompt the longest
    only_det = P.length_warnings(_cfg(), lengths, context_len=det - 1, context_how="here")
    assert len(only_det) == 1 and f"detection's 2-shot prompt up to {det:,} tokens" in only_det[0]
    assert "lower detection.shots" in only_det[0] and "training" not in only_det[0]
    every = P.length_warnings(_cfg(), lengths, context_len=5, context_how="here")
    assert len(every) == 1 and "context of 5 tokens (here)" in every[0]
    assert "training prompt + answer" in every[0] and "evaluation prompt" in every[0]
    assert "set train.max_length=5" in every[0]
    assert P.length_warnings(_cfg(), lengths, context_len=det) == []
    # train.max_length below the context cuts training first: the truncation line, not the context line
    lines = P.length_warnings(_cfg(max_length=8), P.prompt_lengths(_cfg(max_length=8), train, {}, tok), tr + 100)
    assert [line for line in lines if "are longer than train.max_length=8" in line] == lines[-1:]


def test_freeform_training_items_are_measured_as_they_train(tok):
    """Free-form items train on their response (train.target auto): measured; they have no detection prompt yet,
    and with train.target=letter (MC conversion's items, built by detection) no training prompt either."""
    from kaft.detection import FreeFormItem

    train = [FreeFormItem(id=f"f{i}", question="What is Tarn ?", answer="red") for i in range(4)]
    lengths = P.prompt_lengths(_cfg(), train, {"t": _items(2)}, tok)
    assert set(lengths) == {"train", "evaluation"} and lengths["train"]["n"] == 4
    letters = {**_cfg(), "train": {"max_length": 2048, "target": "letter"}}
    assert set(P.prompt_lengths(letters, train, {"t": _items(2)}, tok)) == {"evaluation"}


# ----------------------------------------------------------------------------------------------- overlap
def test_identical_benchmark_is_flagged_whatever_its_ids_and_option_order():
    train = _items()
    copy = [
        MCItem(id=str(i), question=it.question.upper() + "  ", options=it.options[::-1], answer=0)
        for i, it in enumerate(reversed(train))
    ]
    for bench in (train, copy):
        lines = P.overlap_warnings(train, {"test": bench})
        assert (
            len(lines) == 1
            and "benchmark 'test' (dataset.eval.test) is identical to the training set (10 items)" in lines[0]
        )
    assert "identical" in P.overlap_warnings(train, {"t": train[:2]}, {"train": "abc", "t": "abc"})[0]


def test_partial_overlap_over_half_is_flagged_with_its_count():
    train, fresh = (
        _items(),
        [MCItem(id=f"n{i}", question=f"What is Tarn {i} ?", options=COLORS, answer=0) for i in range(10)],
    )
    bench = train[:6] + fresh[:4]
    lines = P.overlap_warnings(train, {"mix": bench, "held_out": fresh, "half": train[:5] + fresh[:5], "empty": []})
    assert len(lines) == 1 and "benchmark 'mix'" in lines[0] and "shares 6 of its 10 items (60%)" in lines[0]


def test_data_warnings_without_tokenizer_checks_overlap_only():
    train = _items()
    assert P.data_warnings(_cfg(), train, {"t": train}) == P.overlap_warnings(train, {"t": train})


def test_warn_prints_one_prefixed_line_each(capsys, caplog):
    P.emit(["first thing", "second thing"])
    err = capsys.readouterr().err.splitlines()
    assert err == ["kaft: warning: first thing", "kaft: warning: second thing"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == ["first thing", "second thing"]


# ----------------------------------------------------------------------------------------------- the model's side
def test_context_of_a_saved_model_from_its_config_json(tmp_path):
    tok = make_tokenizer()
    make_model(len(tok), max_position_embeddings=48).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    got, n, how = P.model_context(
        {"model": {"source": "local", "path": str(tmp_path / "m")}, "cache_dir": str(tmp_path / "cache")}
    )
    assert n == json.loads((tmp_path / "m" / "config.json").read_text())["max_position_embeddings"] == 48
    assert "max_position_embeddings" in how and got("red dog")["input_ids"] == tok("red dog")["input_ids"]
    assert not (tmp_path / "cache").exists()


def test_unloadable_model_is_left_to_the_model_stage(tmp_path):
    tok, n, how = P.model_context(
        {"model": {"source": "local", "path": str(tmp_path / "none")}, "cache_dir": str(tmp_path)}
    )
    assert tok is None and n is None and "no such model directory" in how


def test_testbed_preview_does_not_build(tmp_path):
    from kaft.testbed.config import resolve_config

    cfg = {
        "model": {"source": "testbed"},
        "cache_dir": str(tmp_path / "cache"),
        "testbed": {"model": {"max_position_embeddings": 96}},
    }
    tok, n, how = P.model_context(cfg)
    assert n == resolve_config(cfg["testbed"])["model"]["max_position_embeddings"] == 96
    assert "testbed" in how and len(tok("Answer: A", add_special_tokens=False)["input_ids"]) == 3
    assert not (tmp_path / "cache").exists()  # nothing built, nothing written
