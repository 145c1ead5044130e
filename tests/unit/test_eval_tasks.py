"""Evaluation protocol per benchmark (kaft/eval_tasks.py): lm-eval's own task where lm-eval ships one, else kaft's.

Each benchmark's real config is composed, its loader reads the hub-format fixture rows (tests/fixtures/hub/), and
the lm-eval requests that evaluation would send are built from the task configs kaft hands to lm-eval: the exact
prompt a row becomes, its continuations " A", " B", ... and the target. Offline: lm-eval reads local JSONL copies.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from kaft.data import DataError, MCItem  # noqa: E402
from kaft.eval_tasks import LM_EVAL, PROMPT, load_benchmark, tag_items  # noqa: E402
from kaft.evaluate import evaluate, plan_tasks  # noqa: E402
from kaft.prompts import LETTERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "tests" / "fixtures" / "hub"
LM_EVAL_BENCHMARKS = {
    "medqa": "medqa_4options",
    "medmcqa": "medmcqa",
    "mmlu_star": "mmlu_{subject}",
    "cmmlu_star": "cmmlu_{subject}",
    **{
        f"mmlu_{part}_{d}": "mmlu_{subject}"
        for part in ("id", "ood")
        for d in ("history", "engineering", "law", "medicine")
    },
    "triviaqa": "triviaqa",  # free-form: lm-eval's generate_until task (tests/unit/test_evaluate_generative_lm_eval.py)
}
ZH = "以下是中国关于{}的单项选择题，请选出其中的正确答案。\n\n"


def _bench(dataset: str, bench: str, fixture: str) -> list[MCItem]:
    from test_benchmark_loaders import _compose

    spec = OmegaConf.to_container(_compose([f"dataset={dataset}"]).dataset.eval[bench], resolve=True)
    spec = {**spec, "source": "local", "path": str(HUB / fixture)}
    if spec.get("join"):  # CMB's answer key
        spec["join"] = {**spec["join"], "path": str(HUB / "cmb_answers.json")}
    return load_benchmark(spec, domain=spec.get("domain", "medical"))


def _requests(benches: dict, tmp_path) -> dict:
    """(benchmark, item index) -> (lm-eval task, [(context, continuation)], target), as lm-eval builds them."""
    from lm_eval.tasks import TaskManager

    configs, plan = plan_tasks(benches, tmp_path, "medical", None)
    tasks = TaskManager(include_defaults=False).load(configs)["tasks"]
    out = {}
    for name, parts in plan.items():
        for task, idx in parts:
            t = tasks[task]
            t.set_config(key="num_fewshot", value=0)
            t.build_all_requests(limit=None)
            docs = list(t.test_docs())
            for k, i in enumerate(idx):
                args = [inst.args for inst in t.instances if inst.doc_id == k]
                out[(name, i)] = (task, args, t.doc_to_target(docs[k]))
    return out


CASES = [  # dataset, benchmark, fixture, item, exact prompt, task it runs as
    (
        "medqa",
        "medqa",
        "medqa.jsonl",
        0,
        "Question: A 23-year-old woman presents with dysuria. Which is the best treatment?\nA. Ampicillin\n"
        "B. Ceftriaxone\nC. Doxycycline\nD. Nitrofurantoin\nAnswer:",
        "medqa_4options",
    ),
    (
        "medqa",
        "medmcqa",
        "medmcqa.jsonl",
        0,
        "Question: Chronic urethral obstruction due to benign prismatic hyperplasia can lead to the following change "
        "in kidney parenchyma\nChoices:\nA. Hyperplasia\nB. Hyperophy\nC. Atrophy\nD. Dyplasia\nAnswer:",
        "medmcqa",
    ),
    (
        "medqa",
        "mmlu_star",
        "mmlu",
        0,
        "The following are multiple choice questions (with answers) about anatomy.\n\nWhat is the embryological origin "
        "of the hyoid bone?\nA. The first pharyngeal arch\nB. The first and second pharyngeal arches\nC. The second "
        "pharyngeal arch\nD. The second and third pharyngeal arches\nAnswer:",
        "mmlu_anatomy",
    ),
    (
        "medqa",
        "mmlu_star",
        "mmlu",
        1,
        "The following are multiple choice questions (with answers) about clinical knowledge.\n\nThe energy for all "
        "forms of muscle contraction is provided by:\nA. ATP.\nB. ADP.\nC. phosphocreatine.\nD. oxidative "
        "phosphorylation.\nAnswer:",
        "mmlu_clinical_knowledge",
    ),
    (
        "medqa",
        "cmmlu_star",
        "cmmlu",
        0,
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\n"
        "D. 胸膜顶\n答案：",
        "cmmlu_anatomy",
    ),
    (
        "medqa",
        "cmb",
        "cmb.jsonl",
        0,
        ZH.format("医学")
        + "患者，男性，11岁。X线检查发现右肺中部类圆形病灶，肺门淋巴结肿大。此男孩可能患\nA. 小叶型肺炎\n"
        "B. 浸润性肺结核\nC. 继发性肺结核\nD. 原发性肺结核\nE. 粟粒型肺结核\n答案：",
        None,
    ),
    (
        "medqa",
        "cmexam",
        "cmexam.jsonl",
        0,
        ZH.format("医学")
        + "男，60岁。反复咳嗽、咳痰20年，加重伴气促1周。最可能的诊断是\nA. 慢性阻塞性肺疾病\nB. 支气管哮喘\n"
        "C. 支气管扩张症\nD. 肺结核\nE. 肺癌\n答案：",
        None,
    ),
    *[
        (
            f"xiezhi_{d}",
            f"xiezhi_{d}",
            "xiezhi.json",
            0,
            ZH.format(zh)
            + "秦始皇统一六国是在哪一年？\nA. 公元前221年\nB. 公元前206年\nC. 公元前230年\nD. 公元前202年\n答案：",
            None,
        )
        for d, zh in (("history", "历史学"), ("engineering", "工学"), ("law", "法学"))
    ],
    (
        "medqa_mmedbench",
        "mmedbench_zh",
        "mmedbench.jsonl",
        0,
        ZH.format("医学")
        + "Quel est le traitement de première intention de l'hypertension artérielle essentielle chez "
        "le sujet jeune ?\nA. Un IEC\nB. Un bêtabloquant\nC. Un diurétique de l'anse\nD. Un alpha-bloquant\n"
        "E. La digoxine\n答案：",
        None,
    ),
    *[
        (
            "medqa_mmedbench",
            f"mmedbench_{lang}",
            "mmedbench.jsonl",
            2,
            "For the following medical question, select one correct answer from A to D.\nQuestion: ¿Cuál es el agente "
            "causal más frecuente de la neumonía adquirida en la comunidad?\nOptions:\nA. Haemophilus influenzae\n"
            "B. Streptococcus pneumoniae\nC. Legionella\nD. Mycoplasma\nAnswer:",
            None,
        )
        for lang in ("en", "fr", "ja", "ru", "es")
    ],
    (
        "medqa_halueval",
        "halueval_qa",
        "halueval_qa.jsonl",
        0,
        "For the following hallucination detection question, select one correct answer from A to B.\nQuestion: "
        "#Knowledge#: Arthur's Magazine (1844-1846) was an American literary periodical. First for Women is a woman's "
        "magazine published in the USA.\n#Question#: Which magazine was started first Arthur's Magazine or First for "
        "Women?\n#Answer#: Arthur's Magazine\nDoes the answer contain non-factual or hallucinated information?\n"
        "Options:\nA. Yes\nB. No\nAnswer:",
        None,
    ),
]


@pytest.mark.parametrize("dataset, bench, fixture, i, prompt, lm_task", CASES, ids=[f"{c[1]}-{c[3]}" for c in CASES])
def test_a_row_becomes_this_prompt_and_target(dataset, bench, fixture, i, prompt, lm_task, tmp_path):
    items = _bench(dataset, bench, fixture)
    task, args, target = _requests({bench: items}, tmp_path)[(bench, i)]
    assert args == [(prompt, " " + LETTERS[k]) for k in range(len(items[i].options))]
    assert int(target) == items[i].answer
    if lm_task:  # lm-eval's registered task (renamed per benchmark), reading the rows kaft wrote
        assert task == f"kaft_{bench}__{lm_task}" and items[i].meta[LM_EVAL]["task"] == lm_task
    else:
        assert task == f"kaft_{bench}" and LM_EVAL not in items[i].meta


def test_which_benchmarks_use_lm_evals_task():
    """lm-eval 0.4.13 ships MedQA, MedMCQA, MMLU and CMMLU; the Chinese benchmarks lm-eval lacks get no English
    instruction."""
    declared = {}
    for p in sorted((ROOT / "conf" / "dataset" / "benchmark").glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(p))
        declared[p.stem] = (spec.get("lm_eval") or {}).get("task"), spec.get("prompt")
    assert {k: t for k, (t, _) in declared.items() if t} == LM_EVAL_BENCHMARKS
    chinese = {"cmb", "cmexam", "mmedbench_zh", "xiezhi_history", "xiezhi_engineering", "xiezhi_law"}
    assert {k for k, (_, p) in declared.items() if p} == chinese
    assert all(declared[k][1].startswith("以下是中国关于") for k in chinese)


@pytest.mark.slow
def test_evaluate_scores_lm_evals_prompt_over_all_subjects(tmp_path):
    """MMLU* runs as six lm-eval tasks; its accuracy and per-item rows cover all items in input order, and each
    row's log-likelihoods are those of lm-eval's prompt + " X" computed directly."""
    from test_evaluate import _make_model, _make_tokenizer

    benches = {"mmlu_star": _bench("medqa", "mmlu_star", "mmlu"), "cmexam": _bench("medqa", "cmexam", "cmexam.jsonl")}
    reqs = _requests(benches, tmp_path / "reqs")
    tok = _make_tokenizer([c + x for _, args, _ in reqs.values() for c, x in args])
    model = _make_model(len(tok))
    res = evaluate(model, tok, benches, tmp_path / "eval", "medical", batch_size=4, per_item=True)
    for name, items in benches.items():
        r = res["benchmarks"][name]
        assert r["n"] == len(items) and [row["id"] for row in r["items"]] == [it.id for it in items]
        for i, row in enumerate(r["items"]):
            ref = [_loglik(model, tok, c, x) for c, x in reqs[(name, i)][1]]
            assert row["logprobs"] == pytest.approx(ref, abs=1e-4) and row["answer"] == items[i].answer
        acc = sum(row["pred"] == row["answer"] for row in r["items"]) / len(items)
        assert r["acc"] == pytest.approx(acc)
    n = len(benches["mmlu_star"])
    p = res["benchmarks"]["mmlu_star"]["acc"]
    assert res["benchmarks"]["mmlu_star"]["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))


def _loglik(model, tok, context: str, cont: str) -> float:
    ctx, whole = tok(context)["input_ids"], tok(context + cont)["input_ids"]
    assert whole[: len(ctx)] == ctx
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
    return sum(lp[j - 1, whole[j]].item() for j in range(len(ctx), len(whole)))


ITEM = MCItem(id="q1", question="Q?", options=["a", "b", "c", "d", "e"], answer=4, subject="anatomy")


@pytest.mark.parametrize(
    "spec, words",
    [
        (
            {"lm_eval": {"task": "no_such_task_xyz", "doc": {"question": "question"}}},
            "not a task in lm-eval's registry",
        ),
        ({"lm_eval": {"task": "mmlu_anatomy"}}, "needs 'task'"),
        ({"lm_eval": {"task": "mmlu_anatomy", "doc": {"question": "stem"}}}, "'stem' is not an item field"),
        (
            {"lm_eval": {"task": "mmlu_anatomy", "doc": {"question": "question"}}},
            "has 5 options, lm-eval's mmlu_anatomy",
        ),
        ({"lm_eval": {"task": "medmcqa", "doc": {"x": "options.7"}}, "prompt": "{question}"}, "not both"),
        ({"prompt": "{question} {choices}"}, "prompt must be a string"),
    ],
)
def test_bad_benchmark_specs_fail_at_the_data_stage(spec, words):
    with pytest.raises(DataError, match=words) as e:
        tag_items([ITEM], spec, "bench.jsonl")
    assert str(e.value).startswith("bench.jsonl: ") and "\n" not in str(e.value)


def test_prompt_is_carried_in_meta_and_changes_the_fingerprint():
    from kaft.data import fingerprint

    tagged = tag_items([ITEM], {"prompt": "Q: {question}\n{options}\n答案："}, "b")
    assert tagged[0].meta[PROMPT] == "Q: Q?\nA. a\nB. b\nC. c\nD. d\nE. e\n答案："
    assert fingerprint(tagged) != fingerprint([ITEM]) and tag_items([ITEM], {}, "b") == [ITEM]
