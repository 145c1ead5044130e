"""kaft.evaluate on free-form benchmarks: a real tiny model answers through lm-eval's generate_until (no mock), each
logged response is judged by the verifier, and the benchmark's accuracy is exactly the verdicts' mean."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_model, make_tokenizer  # noqa: E402

from kaft.errors import ConfigError  # noqa: E402
from kaft.evaluate import evaluate  # noqa: E402
from kaft.evaluate_generative import freeform_doc, generation_settings, task_config  # noqa: E402
from kaft.items import FreeFormItem, MCItem  # noqa: E402
from kaft.prompts import FREEFORM_INSTRUCTION, format_freeform, format_question  # noqa: E402
from kaft.targets import prompt as item_prompt  # noqa: E402
from kaft.verifiers import VERIFIERS, Verifier, make_verifier  # noqa: E402

DOMAIN = "medical"
WORDS = ["heart", "lung", "liver", "kidney", "brain", "bone", "skin", "blood"]
MAX_NEW = 4


def _free(n: int = 6) -> list[FreeFormItem]:
    return [
        FreeFormItem(id=f"f{i}", question=f"which organ is number {i} ?", answer=WORDS[i % 8], domain=DOMAIN)
        for i in range(n)
    ]


def _mc(n: int = 4) -> list[MCItem]:
    return [
        MCItem(id=f"m{i}", question=f"which organ is number {i} ?", options=WORDS[:4], answer=i % 4, domain=DOMAIN)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny():
    texts = [format_freeform(it.question, DOMAIN, FREEFORM_INSTRUCTION) + " " + it.answer for it in _free()]
    texts += [format_question(it.question, it.options, DOMAIN) for it in _mc()]
    tok = make_tokenizer(texts, keep_space=True, add_bos=True)
    model = make_model(len(tok), 3, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    return model, tok


def _greedy(model, tok, text: str) -> str:
    """The model's own greedy continuation of ``text`` (HF generate, no lm-eval): cut at the first newline and
    stripped, as lm-eval's until ["\\n"] and remove_whitespace do."""
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0].strip()


@pytest.fixture(scope="module")
def graded(tiny):
    """Items whose references are the model's own greedy answer for every other item (so those are right by
    construction and the rest wrong), with the direct greedy responses."""
    model, tok = tiny
    items = _free()
    direct = [_greedy(model, tok, item_prompt(it, DOMAIN)) for it in items]
    assert all(direct), f"the tiny model answered nothing for some item: {direct}"
    made = [
        FreeFormItem(id=it.id, question=it.question, answer=d if k % 2 == 0 else "nothing at all", domain=DOMAIN)
        for k, (it, d) in enumerate(zip(items, direct))
    ]
    return made, direct


def test_generation_settings_defaults_and_errors():
    assert generation_settings(None) == {"max_new_tokens": 32, "stop": ["\n"]}
    assert generation_settings({"stop": "."}) == {"max_new_tokens": 32, "stop": ["."]}
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": True}, {"stop": [""]}, {"stop": 3}, {"temperature": 1}):
        with pytest.raises(ConfigError, match="evaluation.generation"):
            generation_settings(bad)


def test_task_config_is_generate_until_on_local_rows(tmp_path):
    item = FreeFormItem(id="x", question="which organ ?", answer="heart", aliases=("the heart",), domain=DOMAIN)
    doc = freeform_doc(item, "geography", None)
    assert doc == {"id": "x", "prompt": item_prompt(item, "geography"), "references": ["heart", "the heart"]}
    assert doc["prompt"] == format_freeform("which organ ?", DOMAIN, FREEFORM_INSTRUCTION)  # the item's own domain
    cfg = task_config("kaft_t", tmp_path / "rows.jsonl", {"max_new_tokens": 7, "stop": ["\n", "."]})
    assert cfg["output_type"] == "generate_until" and cfg["doc_to_text"] == "prompt"
    assert cfg["generation_kwargs"] == {"until": ["\n", "."], "max_gen_toks": 7, "do_sample": False, "temperature": 0.0}
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "rows.jsonl").resolve())


def test_generative_accuracy_is_the_verifiers_verdicts(tiny, graded, tmp_path):
    """lm-eval's generate_until ran on the in-memory model (its responses are the model's own greedy ones), and acc
    is the exact verifier's verdicts over those logged responses; MC benchmarks in the same run keep log-likelihood."""
    model, tok = tiny
    items, direct = graded
    res = evaluate(
        model,
        tok,
        {"free": items, "mc": _mc()},
        tmp_path / "eval",
        DOMAIN,
        batch_size=4,
        per_item=True,
        generation={"max_new_tokens": MAX_NEW},
    )
    r = res["benchmarks"]["free"]
    assert [row["id"] for row in r["items"]] == [it.id for it in items]
    assert [row["response"] for row in r["items"]] == direct
    verdicts = [v[0] for v in make_verifier(None).judge(items, [[row["response"]] for row in r["items"]])]
    assert [row["correct"] for row in r["items"]] == verdicts == [k % 2 == 0 for k in range(len(items))]
    assert r["acc"] == pytest.approx(sum(verdicts) / len(verdicts))
    assert r["exact_match"] == pytest.approx(r["acc"])  # lm-eval's own metric agrees on these references
    assert (r["metric"], r["verifier"], r["n"], r["n_judged"], r["no_verdict"]) == ("generative", "exact", 6, 6, 0)
    mc = res["benchmarks"]["mc"]
    assert "metric" not in mc and set(mc["items"][0]) == {"id", "answer", "pred", "logprobs"}
    assert res["average"] == pytest.approx((r["acc"] + mc["acc"]) / 2)


class _Abstains(Verifier):
    """Gives no verdict on the first item's response (an LLM judge's unparseable output), judges the rest exactly."""

    name = "test_abstains"

    def judge(self, items, responses):
        exact = make_verifier({"name": "exact"}).judge(items, responses)
        return [[None] if it.id == "f0" else v for it, v in zip(items, exact)]


@pytest.fixture
def abstains():
    VERIFIERS.register(_Abstains.name, _Abstains)
    yield {"name": _Abstains.name}
    VERIFIERS.unregister(_Abstains.name)


def test_no_verdict_is_counted_and_left_out(tiny, graded, tmp_path, abstains):
    model, tok = tiny
    items, _ = graded
    res = evaluate(
        model, tok, {"free": items}, tmp_path / "e", DOMAIN, verifier=abstains, generation={"max_new_tokens": MAX_NEW}
    )
    r = res["benchmarks"]["free"]
    assert (r["n"], r["n_judged"], r["no_verdict"], r["verifier"]) == (6, 5, 1, "test_abstains")
    assert "items" not in r  # per_item off: the rows are judged but not kept
    assert r["acc"] == pytest.approx(2 / 5)  # items f2, f4 right of the five judged (f0 had no verdict)
    assert res["average"] == r["acc"]


def test_mixed_kinds_in_one_benchmark_are_refused(tmp_path):
    from kaft.evaluate import EvalError

    with pytest.raises(EvalError, match="not a FreeFormItem"):
        evaluate(None, None, {"b": [*_free(2), *_mc(1)]}, tmp_path, DOMAIN)


def test_llm_judge_judges_with_the_evaluated_model(tiny, graded, tmp_path):
    """``verifier=llm_judge`` without a model of its own judges with the model under evaluation; its unparseable
    verdicts are counted in no_verdict and left out of acc's denominator."""
    model, tok = tiny
    items, _ = graded
    res = evaluate(
        model,
        tok,
        {"free": items[:2]},
        tmp_path / "eval",
        DOMAIN,
        batch_size=2,
        generation={"max_new_tokens": MAX_NEW},
        verifier={"name": "llm_judge", "max_new_tokens": 3, "batch_size": 2},
    )
    r = res["benchmarks"]["free"]
    assert r["verifier"] == "llm_judge" and r["n"] == 2 and r["n_judged"] + r["no_verdict"] == 2
    assert (r["acc"] is None) == (r["n_judged"] == 0)
