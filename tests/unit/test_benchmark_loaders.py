"""The paper's benchmark and model configs (conf/dataset/, conf/dataset/benchmark/, conf/model/).

Every benchmark loader runs on a small fixture in its hub's row format (tests/fixtures/hub/): the real config is
composed with Hydra, only `source`/`path` (and a join file) are pointed at the fixture, and every other key —
fields, subsets, filter, adapter, answer_base — stays as configured, so a schema mistake fails here.
"""

from collections.abc import Mapping
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kaft.data import DataError, _filter, _join, load_items, normalize_rows, read_spec_rows

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
HUB = ROOT / "tests" / "fixtures" / "hub"

NEW_DATASETS = [
    "medqa",
    "medqa_mmedbench",
    "medqa_halueval",
    "xiezhi_history",
    "xiezhi_engineering",
    "xiezhi_law",
    "ren_history",
    "ren_engineering",
    "ren_law",
]
NEW_MODELS = [
    "llama3_8b",
    "llama3_3b",
    "qwen1_5_7b",
    "mistral_7b",
    "qwen2_7b_instruct",
    "qwen3_4b_instruct",
    "glm4_9b",
    "qwen2_5_32b_instruct",
]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _spec(dataset: str, bench: str | None, path: Path, **extra) -> dict:
    """The composed spec of dataset.eval.<bench> (or dataset.train), resolved, read from a local fixture."""
    ds = _compose([f"dataset={dataset}"]).dataset
    spec = OmegaConf.to_container(ds.eval[bench] if bench else ds.train, resolve=True)
    return {**spec, "source": "local", "path": str(path), **extra}


def _load(spec):
    return load_items(spec, domain=spec.get("domain", "medical"))


# ----------------------------------------------------------------------------------------------- composition
def test_medqa_is_the_papers_suite_and_llama3_8b_the_papers_recipe():
    c = _compose(["model=llama3_8b", "dataset=medqa"])
    assert list(c.dataset.eval) == ["medqa", "medmcqa", "mmlu_star", "cmb", "cmexam", "cmmlu_star"]  # Table 2
    assert c.dataset.train.path == "GBaker/MedQA-USMLE-4-options" and c.dataset.train.split == "train"
    assert c.dataset.eval.medqa.split == "test" and c.dataset.eval.medmcqa.split == "validation"
    t = c.train
    assert (t.lr, t.batch_size * t.grad_accum, t.epochs, t.max_length, t.warmup_ratio) == (1e-4, 16, 1, 2048, 0.1)
    assert (t.lora.r, t.lora.lora_alpha) == (16, 32) and "q_proj" in t.lora.target_modules
    assert c.model.path == "meta-llama/Meta-Llama-3-8B" and c.model.dtype == "bfloat16"
    assert (c.detection.num_orders, c.detection.num_samples, c.detection.temperature) == (10, 10, 0.7)


@pytest.mark.parametrize("model", NEW_MODELS)
def test_model_configs_compose_with_the_kaft_recipe(model):
    c = _compose([f"model={model}", "dataset=medqa"])
    OmegaConf.to_container(c, resolve=True, throw_on_missing=True)
    t = c.train
    assert t.batch_size * t.grad_accum == 16 and t.epochs == 1 and t.max_length == 2048 and t.warmup_ratio == 0.1
    assert t.lr == (2e-4 if model == "llama3_3b" else 1e-4)  # App. A.2: "except 2e-4 for LLaMA3-3B"
    assert c.model.source == "hub" and c.model.name == model
    assert c.detection.batch_size >= 1 and c.evaluation.batch_size >= 1


def test_paper_backbones():
    paths = {m: _compose([f"model={m}"]).model.path for m in ["llama3_8b", "llama3_3b", "qwen1_5_7b", "mistral_7b"]}
    assert paths == {
        "llama3_8b": "meta-llama/Meta-Llama-3-8B",
        "llama3_3b": "meta-llama/Llama-3.2-3B",
        "qwen1_5_7b": "Qwen/Qwen1.5-7B",
        "mistral_7b": "mistralai/Mistral-7B-v0.1",
    }


@pytest.mark.parametrize("dataset", NEW_DATASETS)
def test_dataset_configs_compose(dataset):
    c = _compose([f"dataset={dataset}"])
    OmegaConf.to_container(c, resolve=True, throw_on_missing=True)
    assert c.dataset.name == dataset and c.dataset.eval


def test_every_benchmark_file_is_used_by_a_dataset():
    used = set()
    for d in NEW_DATASETS:  # each dataset's defaults list: benchmark@eval.<name>: <file>
        for entry in OmegaConf.load(CONF / "dataset" / f"{d}.yaml").get("defaults", []):
            if isinstance(entry, Mapping) or hasattr(entry, "items"):
                used |= {v for k, v in entry.items() if str(k).startswith("benchmark@eval.")}
        assert set(_compose([f"dataset={d}"]).dataset.eval)  # and it composes with benchmarks
    files = {p.stem for p in (CONF / "dataset" / "benchmark").glob("*.yaml")}
    # composed on demand (+dataset/benchmark@dataset.eval.triviaqa=triviaqa: test_evaluate_generative_lm_eval.py)
    # Ren et al.'s medicine ID / OOD splits: their medicine IFT set (MedMCQA's) has no kaft dataset config
    opt_in = {"triviaqa", "mmlu_id_medicine", "mmlu_ood_medicine"}
    assert files - opt_in == used


def test_a_benchmark_can_be_dropped_from_the_suite():
    assert "cmb" not in _compose(["dataset=medqa", "~dataset.eval.cmb"]).dataset.eval


# ----------------------------------------------------------------------------------------------- loaders
def test_medqa_train_and_test():
    for bench in (None, "medqa"):
        items = _load(_spec("medqa", bench, HUB / "medqa.jsonl"))
        assert [it.answer for it in items] == [3, 0, 1]
        assert items[0].options == ["Ampicillin", "Ceftriaxone", "Doxycycline", "Nitrofurantoin"]
        assert items[0].question.startswith("A 23-year-old woman")


def test_medmcqa_cop_is_zero_based():
    items = _load(_spec("medqa", "medmcqa", HUB / "medmcqa.jsonl"))
    assert len(items) == 4 and [it.answer for it in items] == [2, 2, 3, 0]
    assert items[0].options == ["Hyperplasia", "Hyperophy", "Atrophy", "Dyplasia"]
    assert items[1].options[items[1].answer] == "Vitamin B12"
    assert items[0].id == "e9ad821a-c438-4965-9f77-760819dfa155" and items[0].subject == "Anatomy"


def test_mmlu_star_concatenates_the_six_medical_subjects():
    items = _load(_spec("medqa", "mmlu_star", HUB / "mmlu"))
    assert [it.subject for it in items] == [
        "anatomy",
        "clinical_knowledge",
        "college_biology",
        "college_medicine",
        "medical_genetics",
        "professional_medicine",
    ]
    assert [it.answer for it in items] == [3, 0, 0, 0, 1, 2]
    assert items[4].options[1].startswith("superior fitness") and len({it.id for it in items}) == 6


def test_cmmlu_star_letter_answers_and_option_columns():
    items = _load(_spec("medqa", "cmmlu_star", HUB / "cmmlu"))
    assert [it.subject for it in items] == [
        "anatomy",
        "clinical_knowledge",
        "college_medical_statistics",
        "college_medicine",
        "professional_medicine",
    ]
    assert [it.answer for it in items] == [1, 0, 3, 3, 1]
    assert items[0].options == ["肋胸膜", "肺胸膜", "膈胸膜", "胸膜顶"] and items[0].question == "壁胸膜的分部不包括"
    assert [it.id for it in items][:2] == ["anatomy-0", "clinical_knowledge-0"]


def test_cmb_joins_answers_keeps_single_answer_and_drops_null_options():
    spec = _spec("medqa", "cmb", HUB / "cmb.jsonl")
    spec["join"] = {**spec["join"], "path": str(HUB / "cmb_answers.json")}
    items = _load(spec)
    assert [it.id for it in items] == ["0", "2", "3"]  # id 1 is a 多项选择题 (multi-answer)
    assert [it.answer for it in items] == [3, 1, 0]
    assert items[0].options[3] == "原发性肺结核" and len(items[0].options) == 5 and len(items[1].options) == 4
    assert items[0].subject == "口腔执业医师"


def test_cmb_without_its_answer_key_says_which_file():
    spec = _spec("medqa", "cmb", HUB / "cmb.jsonl")
    with pytest.raises(DataError, match="CMB-test-choice-answer.json: no such file"):
        _load(spec)


def test_cmexam_parses_option_lines_and_keeps_single_choice():
    items = _load(_spec("medqa", "cmexam", HUB / "cmexam.jsonl"))
    assert len(items) == 2 and [it.answer for it in items] == [0, 1]
    assert items[0].options == ["慢性阻塞性肺疾病", "支气管哮喘", "支气管扩张症", "肺结核", "肺癌"]
    assert items[1].options[1] == "麻黄汤"


@pytest.mark.parametrize("lang", ["en", "zh", "fr", "ja", "ru", "es"])
def test_mmedbench_single_answer_only(lang):
    items = _load(_spec("medqa_mmedbench", f"mmedbench_{lang}", HUB / "mmedbench.jsonl"))
    assert len(items) == 3 and [it.answer for it in items] == [0, 0, 1]  # the "A,C" item is dropped
    assert [len(it.options) for it in items] == [5, 4, 4]  # unused E slot (null) dropped
    assert items[2].options[1] == "Streptococcus pneumoniae"


@pytest.mark.parametrize("task, what", [("qa", "Answer"), ("dialogue", "Response"), ("summarization", "Summary")])
def test_halueval_is_a_seeded_yes_no_question(task, what):
    spec = _spec("medqa_halueval", f"halueval_{task}", HUB / f"halueval_{task}.jsonl")
    items = _load(spec)
    raw = [r for r in read_spec_rows({"source": "local", "path": spec["path"]}, {"path": spec["path"]}, {})]
    assert len(items) == len(raw)
    right, halluc = {
        "qa": ("right_answer", "hallucinated_answer"),
        "dialogue": ("right_response", "hallucinated_response"),
        "summarization": ("right_summary", "hallucinated_summary"),
    }[task]
    for it, r in zip(items, raw):
        assert it.options == ["Yes", "No"] and it.domain == "hallucination detection"
        assert f"#{what}#: " in it.question and it.subject == f"halueval_{task}"
        shown = it.question.split(f"#{what}#: ")[1].rsplit("\n", 1)[0]
        assert shown == (r[halluc] if it.answer == 0 else r[right])  # "Yes" (0) iff the hallucinated output
    assert _load(spec) == items  # the draw is seeded
    firsts = [_load({**spec, "halueval_seed": s})[0].answer for s in range(40)]
    assert 5 < sum(firsts) < 35  # over seeds, row 1 shows the right and the hallucinated output


@pytest.mark.parametrize("domain", ["history", "engineering", "law"])
def test_xiezhi_train_and_test(domain):
    for bench in (None, f"xiezhi_{domain}"):
        items = _load(_spec(f"xiezhi_{domain}", bench, HUB / "xiezhi.json"))
        assert [it.answer for it in items] == [0, 1, 0] and len(items[1].options) == 4
        assert items[0].options[0] == "公元前221年"


# ----------------------------------------------------------------------------------------------- adapter units
def test_filter_conditions():
    rows = [{"q": "a", "t": "x", "n": 1}, {"q": "b", "t": "y", "n": 2}, {"q": "c", "t": "x", "n": 3}]

    def pick(conds):
        return [r["q"] for r in _filter(rows, conds)]

    assert pick({"t": "x"}) == ["a", "c"] and pick({"n": [1, 2]}) == ["a", "b"]
    assert pick({"t": "x", "n": {"pattern": "[3-9]"}}) == ["c"]
    with pytest.raises(DataError, match="pattern"):
        pick({"t": {"regex": "x"}})


def test_option_lines_formats():
    from kaft.data import adapt_option_lines

    spec = {"fields": {"options": "o", "answer": "a"}}
    rows = [
        {"o": "A. x\nB. y\n", "a": "B"},
        {"o": "(A) x\n(B) y", "a": "A"},
        {"o": "A、甲\nB、乙", "a": "A"},
        {"o": [{"key": "B", "value": "y"}, {"key": "A", "value": "x"}], "a": "A"},
        {"o": "Apple\nBanana", "a": "A"},
    ]
    out = list(adapt_option_lines(rows, spec))
    assert [r["o"] for r in out] == [["x", "y"], ["x", "y"], ["甲", "乙"], ["x", "y"], ["Apple", "Banana"]]
    bad = list(adapt_option_lines([{"question": "q", "o": "x\ny", "a": "z"}], {**spec, "answer_text": True}))
    with pytest.raises(DataError, match="row 1: field 'answer'"):
        normalize_rows(bad, "f", fields={"options": "o", "answer": "a"})


def test_drop_empty_options_keeps_gaps_and_errors_are_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"question": "q", "options": {"A": "x", "B": null, "C": "z", "D": null}, "answer": "A"}\n')
    with pytest.raises(DataError, match="an option is empty"):  # a gap before C would shift letters: not dropped
        load_items({"source": "local", "path": str(p), "drop_empty_options": True})
    with pytest.raises(DataError, match="unknown adapter 'nope'"):
        load_items({"source": "local", "path": str(p), "adapter": "nope"})
    ans = tmp_path / "a.json"
    ans.write_text('[{"id": 1, "answer": "A"}]')
    with pytest.raises(DataError, match="row 1: field 'id': '7' not found"):
        list(_join([{"id": 7}], {"path": str(ans), "key": "id"}, "f"))
    with pytest.raises(DataError, match="must be a directory"):
        load_items({"source": "local", "path": str(p), "subsets": ["a"]})


def test_limit_counts_rows_after_the_filter():
    spec = _spec("medqa_mmedbench", "mmedbench_en", HUB / "mmedbench.jsonl", limit=2)
    assert [it.answer for it in _load(spec)] == [0, 0]  # the filtered multi-answer row is not counted


def test_hub_data_files_path_is_real_code(tmp_path):
    """`data_files` goes through datasets.load_dataset; a local directory stands in for the hub repo (offline)."""
    import shutil

    (tmp_path / "Test").mkdir()
    shutil.copy(HUB / "mmedbench.jsonl", tmp_path / "Test" / "English.jsonl")
    spec = {**_spec("medqa_mmedbench", "mmedbench_en", tmp_path), "source": "hub"}
    items = _load(spec)
    assert [it.answer for it in items] == [0, 0, 1] and [len(it.options) for it in items] == [5, 4, 4]


# Ren et al. App. Table 11, verbatim: the in-domain MMLU subcategories of each domain
REN_ID = {
    "engineering": ["electrical_engineering"],
    "history": ["high_school_european_history", "high_school_us_history", "high_school_world_history", "prehistory"],
    "law": [
        *("econometrics", "high_school_geography", "high_school_government_and_politics"),
        *("high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality"),
        *("international_law", "jurisprudence", "professional_law", "sociology", "public_relations"),
        *("professional_psychology", "security_studies", "us_foreign_policy"),
    ],
    "medicine": [
        *("anatomy", "clinical_knowledge", "college_medicine", "human_aging", "medical_genetics", "nutrition"),
        *("professional_medicine", "virology"),
    ],
}


@pytest.mark.parametrize("domain", sorted(REN_ID))
def test_ren_id_and_ood_split_mmlu_as_app_table_11_does(domain):
    """ID = Table 11's subcategories; OOD = "the remaining subcategories": together exactly lm-eval's 57 MMLU tasks."""
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    mmlu = {p.stem.removeprefix("mmlu_") for p in tasks.glob("mmlu_*.yaml")}
    assert len(mmlu) == 57
    bench = CONF / "dataset" / "benchmark"
    ids = OmegaConf.load(bench / f"mmlu_id_{domain}.yaml").subsets
    ood = OmegaConf.load(bench / f"mmlu_ood_{domain}.yaml").subsets
    assert sorted(ids) == sorted(REN_ID[domain]) and set(ids) | set(ood) == mmlu and not set(ids) & set(ood)


@pytest.mark.parametrize("domain", ["history", "engineering", "law"])
def test_ren_datasets_evaluate_homo_id_and_ood(domain):
    c = _compose([f"dataset=ren_{domain}"])
    assert list(c.dataset.eval) == [f"xiezhi_{domain}", "mmlu_id", "mmlu_ood"]
    assert c.dataset.train.path.endswith(f"xiezhi/{domain}_train.json")
