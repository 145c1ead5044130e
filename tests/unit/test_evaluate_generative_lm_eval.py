"""A free-form benchmark scored through lm-eval's own generative task (``triviaqa``, conf/dataset/benchmark/
triviaqa.yaml) on a local fixture: its prompt, stop sequences and exact_match, the in-memory model's responses and
the verifier's verdicts over them; and the spec errors of free-form benchmarks."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from helpers import make_model, make_tokenizer  # noqa: E402

from kaft.data import DataError  # noqa: E402
from kaft.eval_tasks import LM_EVAL, PROMPT, load_benchmark  # noqa: E402
from kaft.evaluate import evaluate, plan_tasks  # noqa: E402
from kaft.items import FreeFormItem  # noqa: E402
from kaft.verifiers import make_verifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "data" / "triviaqa_tiny.jsonl"
SPEC = {**yaml.safe_load((ROOT / "conf" / "dataset" / "benchmark" / "triviaqa.yaml").read_text()), "path": str(FIXTURE)}
STOPS = ["\n", ".", ","]  # lm-eval's triviaqa until


@pytest.fixture(scope="module")
def items():
    return load_benchmark(SPEC, domain="trivia")


def test_spec_loads_freeform_items_tagged_with_the_shipped_task(items):
    assert all(isinstance(it, FreeFormItem) for it in items) and [it.id for it in items][:2] == ["tqa_1", "tqa_2"]
    first = items[0]
    assert first.references == ("heart", "the heart", "cardiac muscle")
    assert first.meta[LM_EVAL] == {
        "task": "triviaqa",
        "doc": {
            "question_id": "tqa_1",
            "question": "Which organ pumps blood",
            "answer": {"value": "heart", "aliases": ["heart", "the heart", "cardiac muscle"]},
        },
    }


def test_requests_are_triviaqa_prompts_with_its_stops(items, tmp_path):
    from lm_eval.tasks import TaskManager

    configs, plan = plan_tasks({"trivia": items}, tmp_path, "trivia", None, {"max_new_tokens": 5, "stop": ["\n"]})
    ((task, idx),) = plan["trivia"]
    assert idx == list(range(len(items))) and configs[0]["generation_kwargs"]["max_gen_toks"] == 5
    loaded = TaskManager(include_defaults=False).load(configs)["tasks"][task]
    loaded.set_config(key="num_fewshot", value=0)
    loaded.build_all_requests(limit=None)
    args = sorted((inst.doc_id, inst.args) for inst in loaded.instances)
    assert [a[0] for _, a in args] == [f"Question: {it.question}?\nAnswer:" for it in items]
    assert all(a[1]["until"] == STOPS and a[1]["do_sample"] is False for _, a in args)


def _greedy(model, tok, text: str, n: int) -> str:
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    s = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    for stop in STOPS:
        s = s.split(stop)[0]
    return s.strip()


def test_shipped_task_responses_are_judged_by_the_verifier(items, tmp_path):
    texts = [f"Question: {it.question}?\nAnswer: {a}." for it in items for a in it.references]
    tok = make_tokenizer(texts, keep_space=True, add_bos=True)
    model = make_model(len(tok), 1, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    res = evaluate(model, tok, {"trivia": items}, tmp_path, "trivia", per_item=True, generation={"max_new_tokens": 4})
    r = res["benchmarks"]["trivia"]
    responses = [row["response"] for row in r["items"]]
    assert responses == [_greedy(model, tok, f"Question: {it.question}?\nAnswer:", 4) for it in items]
    verdicts = [v[0] for v in make_verifier(None).judge(items, [[x] for x in responses])]
    assert [row["correct"] for row in r["items"]] == verdicts
    assert r["acc"] == pytest.approx(sum(verdicts) / len(verdicts)) and r["metric"] == "generative"
    assert 0.0 <= r["exact_match"] <= 1.0 and r["n"] == len(items)


def test_freeform_spec_errors(tmp_path):
    with pytest.raises(DataError, match="multiple_choice task; a format: freeform benchmark .* generate_until"):
        load_benchmark({**SPEC, "lm_eval": {"task": "medmcqa", "doc": {"question": "question"}}})
    with pytest.raises(DataError, match="lm_eval.doc.answer.value: 'options' is not an item field"):
        load_benchmark({**SPEC, "lm_eval": {"task": "triviaqa", "doc": {"answer": {"value": "options"}}}})
    with pytest.raises(DataError, match="no options"):
        load_benchmark({k: v for k, v in SPEC.items() if k != "lm_eval"} | {"prompt": "{question} {options}"})
    with pytest.raises(DataError, match="format must be one of"):
        load_benchmark({**SPEC, "format": "essay"})
    own = load_benchmark({k: v for k, v in SPEC.items() if k != "lm_eval"} | {"prompt": "Q: {question}\nA:"})
    assert own[0].meta[PROMPT] == "Q: Which organ pumps blood\nA:"


def test_the_documented_override_composes_and_loads(tmp_path):
    """`+dataset/benchmark@dataset.eval.triviaqa=triviaqa dataset.eval.triviaqa.path=...` (docs/configuration.md)
    adds the free-form benchmark to a dataset's suite; the data stage loads it beside the multiple-choice ones."""
    from hydra import compose, initialize_config_dir

    from kaft import stages as S

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["+dataset/benchmark@dataset.eval.triviaqa=triviaqa", f"dataset.eval.triviaqa.path={FIXTURE}"],
        )
    data = S.stage_data(cfg, None)
    assert set(data.evals) == {"testbed_id", "testbed_ood", "triviaqa"}
    assert [it.id for it in data.evals["triviaqa"]] == ["tqa_1", "tqa_2", "tqa_3", "tqa_4"]
    assert data.evals["triviaqa"][0].meta[LM_EVAL]["task"] == "triviaqa"
