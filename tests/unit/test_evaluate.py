"""kaft.evaluate: lm-eval scores exactly ``format_question(...) + " A"`` on an in-memory tiny model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_model, make_tokenizer  # noqa: E402

from kaft.data import MCItem  # noqa: E402
from kaft.evaluate import EvalError, evaluate, task_config, task_name, write_task_file  # noqa: E402
from kaft.prompts import answer_text, format_question  # noqa: E402

DOMAIN = "medical"


def _items(prefix: str, n: int, n_opts: int = 4) -> list[MCItem]:
    words = ["heart", "lung", "liver", "kidney", "brain", "bone", "skin", "blood", "nerve", "muscle"]
    out = []
    for i in range(n):
        opts = [f"{words[(i + j) % len(words)]} {j}" for j in range(n_opts)]
        out.append(
            MCItem(
                id=f"{prefix}{i}",
                question=f"which organ is number {i} in {prefix} ?",
                options=opts,
                answer=(3 * i + 1) % n_opts,
                subject="anatomy",
                domain=DOMAIN,
            )
        )
    return out


def _make_tokenizer(texts):
    """Tokens keep their leading space (" A" != "A" != "  A") and encodings start with <s>."""
    return make_tokenizer(texts, keep_space=True, add_bos=True)


def _make_model(vocab_size: int, seed: int = 0):
    return make_model(
        vocab_size,
        seed,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="module")
def setup():
    benches = {"medqa-test": _items("q", 8), "MMLU med": _items("m", 6, n_opts=5)}
    texts = [
        format_question(it.question, it.options, DOMAIN) + answer_text(k)
        for items in benches.values()
        for it in items
        for k in range(len(it.options))
    ]
    tok = _make_tokenizer(texts)
    return _make_model(len(tok)), tok, benches


def _reference_logprobs(model, tok, item: MCItem) -> list[float]:
    """kaft's own scoring: sum log p(answer_text(k) tokens | prompt), straight from the model."""
    prompt = format_question(item.question, item.options, DOMAIN)
    ctx = tok(prompt)["input_ids"]
    out = []
    for k in range(len(item.options)):
        whole = tok(prompt + answer_text(k))["input_ids"]
        assert whole[: len(ctx)] == ctx
        cont = whole[len(ctx) :]
        assert len(cont) == 1 and tok.convert_ids_to_tokens(cont) == [answer_text(k)]
        with torch.no_grad():
            logits = model(torch.tensor([whole[:-1]])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        out.append(sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
    return out


@pytest.mark.slow
def test_evaluate_matches_direct_loglikelihood(setup, tmp_path):
    model, tok, benches = setup
    res = evaluate(model, tok, benches, tmp_path / "eval", DOMAIN, batch_size=4, per_item=True)
    assert set(res["benchmarks"]) == set(benches)
    accs = []
    for name, items in benches.items():
        r = res["benchmarks"][name]
        assert r["n"] == len(items)
        assert 0.0 <= r["acc"] <= 1.0
        assert r["acc_stderr"] is None or r["acc_stderr"] >= 0
        assert [row["id"] for row in r["items"]] == [it.id for it in items]
        correct = 0
        for it, row in zip(items, r["items"]):
            ref = _reference_logprobs(model, tok, it)
            assert row["logprobs"] == pytest.approx(ref, abs=1e-4)
            pred = max(range(len(ref)), key=ref.__getitem__)
            assert row["pred"] == pred and row["answer"] == it.answer
            correct += pred == it.answer
        assert r["acc"] == pytest.approx(correct / len(items))
        accs.append(r["acc"])
    assert res["average"] == pytest.approx(sum(accs) / len(accs))
    # the data files are absolute and under work_dir
    assert len(list((tmp_path / "eval").glob("kaft_*.jsonl"))) == 2
    assert (tmp_path / "eval" / "hf_datasets_cache").is_dir(), "the datasets cache stays under work_dir"


def test_requests_are_prompt_plus_answer_text(setup, tmp_path):
    """Inspect the lm-eval requests themselves: (prompt, " A"), (prompt, " B"), ... - no double space."""
    from lm_eval.tasks import TaskManager

    _, _, benches = setup
    items = benches["MMLU med"]
    path = write_task_file(items, tmp_path, "MMLU med", DOMAIN)
    assert path.is_absolute()
    loaded = TaskManager(include_defaults=False).load([task_config(task_name("MMLU med"), path)])
    task = loaded["tasks"][task_name("MMLU med")]
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=None)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst.args)
    assert len(by_doc) == len(items)
    for i, it in enumerate(items):
        prompt = format_question(it.question, it.options, DOMAIN)
        assert by_doc[i] == [(prompt, answer_text(k)) for k in range(len(it.options))]


@pytest.mark.slow
def test_evaluate_peft_model_and_limit(setup, tmp_path):
    peft = pytest.importorskip("peft")
    model, tok, benches = setup
    base = evaluate(model, tok, benches, tmp_path / "base", DOMAIN, batch_size=16, limit=5)
    assert all(r["n"] == 5 for r in base["benchmarks"].values())
    wrapped = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    wrapped.train()
    res = evaluate(wrapped, tok, benches, tmp_path / "peft", DOMAIN, batch_size=3, limit=5)
    assert wrapped.training, "the caller's train mode is restored"
    # LoRA's B starts at zero: the wrapped model computes the same function as its base
    for name in benches:
        assert res["benchmarks"][name]["acc"] == pytest.approx(base["benchmarks"][name]["acc"])
    assert res["average"] == pytest.approx(base["average"])


def test_evaluate_keeps_global_rng(setup, tmp_path):
    model, tok, benches = setup
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate(model, tok, {"one": benches["medqa-test"][:2]}, tmp_path, DOMAIN)
    assert torch.equal(torch.rand(3), expected)


def test_validation_errors(setup, tmp_path):
    model, tok, benches = setup
    with pytest.raises(ValueError, match="'empty-bench'"):
        evaluate(model, tok, {"ok": benches["medqa-test"], "empty-bench": []}, tmp_path, DOMAIN)
    with pytest.raises(EvalError, match="no benchmarks"):
        evaluate(model, tok, {}, tmp_path, DOMAIN)
    with pytest.raises(EvalError, match="MCItem"):
        evaluate(model, tok, {"raw": [{"question": "q"}]}, tmp_path, DOMAIN)
    with pytest.raises(EvalError, match="limit"):
        evaluate(model, tok, benches, tmp_path, DOMAIN, limit=0)


def test_task_names_valid_and_unique():
    assert task_name("MedQA-test (4 opt)") == "kaft_MedQA_test_4_opt"
    taken = {task_name("a-b")}
    assert task_name("a_b", taken) == "kaft_a_b_2"
    assert task_name("") == "kaft_benchmark"
