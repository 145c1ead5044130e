"""detection=generative on the tiny test model: Nr responses per query judged by the verifier, Score = the fraction
judged correct (KaFT Eq. 1 over responses, checked against the recorded verdicts), No = the question and its
paraphrases, resumable chunk by chunk, the exact estimator refused in one line, and sample_freeform's contract."""

from __future__ import annotations

import pytest
from helpers import WORDS, make_model, make_tokenizer

from kaft.detection import (
    DETECTORS,
    DetectionError,
    HFBackend,
    detector_for,
    reads_verifier,
    run_detection,
    sample_freeform,
    sample_prompts,
    settings,
    validate,
)
from kaft.detection.generative import EXACT_REFUSED, majority_response, variants
from kaft.detection.hf_backend import _until
from kaft.errors import ConfigError
from kaft.items import FreeFormItem
from kaft.prompts import FREEFORM_INSTRUCTION
from kaft.verifiers import make_verifier

pytestmark = pytest.mark.usefixtures("one_thread")
ANSWERS = ["red", "green", "blue", "yellow", "cat", "dog"]


def _items(n: int = 6) -> list[FreeFormItem]:
    return [
        FreeFormItem(
            id=f"f{i}",
            question=f"What is the capital of Zorvia {i} ?",
            answer=ANSWERS[i % len(ANSWERS)],
            domain="geography",
            meta={"paraphrases": [f"What is Zorvia {i} capital ?"]} if i % 2 else {},
        )
        for i in range(n)
    ]


@pytest.fixture()
def backend():
    tok = make_tokenizer([*WORDS, *FREEFORM_INSTRUCTION.split()])
    return HFBackend(make_model(len(tok)), tok, batch_size=4)


DET = {"name": "generative", "num_orders": 2, "num_samples": 3, "shots": 2, "max_response_tokens": 3, "chunk_size": 4}


def test_registered_reads_freeform_and_the_verifier():
    cls = DETECTORS.get("generative")
    assert cls.input == "freeform" and reads_verifier({"name": "generative"})
    assert not reads_verifier({"name": "diversified"}) and not reads_verifier({"name": "mc_conversion"})
    need = detector_for({"name": "generative", "max_new_tokens": 2, "max_response_tokens": 7}).need()
    assert (need.max_new_tokens, need.samples, need.temperature, need.letter_probs) == (7, 10, 0.7, False)
    greedy = detector_for({"name": "generative", "response_sampling": False}).need()
    assert (greedy.samples, greedy.temperature, greedy.max_new_tokens) == (1, 0.0, 32)
    s = settings({"name": "generative"})
    assert (s["temperature"], s["num_samples"], s["estimator"], s["max_response_tokens"]) == (0.7, 10, "sample", 32)


def test_exact_estimator_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        validate({"name": "generative", "estimator": "exact"})
    assert isinstance(e.value, DetectionError) and str(e.value) == EXACT_REFUSED and "\n" not in EXACT_REFUSED
    with pytest.raises(DetectionError, match="multiple-choice layout"):
        validate({"name": "generative", "prompt": "ren"})


def test_queries_are_the_question_then_its_paraphrases():
    items = _items(2)
    assert variants(items[0], 10) == [items[0].question]  # no paraphrase source: No = 1
    assert variants(items[1], 10) == [items[1].question, "What is Zorvia 1 capital ?"]
    assert variants(items[1], 1) == [items[1].question]
    det = detector_for({**DET, "shots": 1})
    prompts = det.prompts(items, 0, "general", None, items, 0)
    assert [i for i, _ in prompts] == [0, 1, 1]
    assert all(p.endswith("Answer:") and p.count("\n\n") == 1 for _, p in prompts)  # one shot, then the query
    no_diverse = detector_for({**DET, "shots": 1, "diverse_query": False})
    assert [i for i, _ in no_diverse.prompts(items, 0, "general", None, items, 0)] == [0, 1]


def test_generative_records_score_the_verdicts_and_resume(backend, tmp_path):
    items = _items()
    verifier = make_verifier({"name": "exact"})
    records = run_detection(backend, items, DET, 0, "geography", None, False, tmp_path / "work", verifier)
    assert [r["id"] for r in records] == [it.id for it in items]
    for it, r in zip(items, records):
        n_queries = len(variants(it, 2))
        assert r["queries"] == n_queries and len(r["responses"]) == n_queries
        assert all(len(per) == 3 for per in r["responses"])
        # the verdicts are the verifier's on the recorded responses, and Score is their mean (Eq. 1)
        assert r["verdicts"] == verifier.judge([it] * n_queries, r["responses"])
        flat = [v for per in r["verdicts"] for v in per]
        assert r["score"] == pytest.approx(sum(flat) / len(flat)) and r["unparsed"] == 0 and r["n_judged"] == len(flat)
        assert r["any_correct"] == any(flat) and r["gold"] == it.answer
        assert all("\n" not in x and x == x.strip() for per in r["responses"] for x in per)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["chunk_00000.jsonl", "chunk_00001.jsonl"]

    class Dead:  # a resumed run reads its finished chunks: no model call at all
        tokenizer = backend.tokenizer

        def sample(self, *a, **k):
            raise AssertionError("a finished chunk was probed again")

    again = run_detection(Dead(), items, DET, 0, "geography", None, False, tmp_path / "work", verifier)
    assert again == records
    fresh = run_detection(backend, items, DET, 0, "geography", None, False, None, verifier)
    assert fresh == records  # chunk seeds, not the run, fix the samples


def test_no_verdicts_are_discarded_and_counted():
    class Half:
        name, needs_model = "half", False

        def judge(self, items, responses):
            return [[None if j % 2 else True for j in range(len(r))] for r in responses]

    det = detector_for({**DET, "num_orders": 1})
    det.verifier = Half()
    it = _items(1)[0]
    rec = det.record(it, [{"responses": ["a", "b", "c"], "verdicts": [True, None, False]}])
    assert (rec["score"], rec["n_judged"], rec["unparsed"]) == (0.5, 2, 1)
    none = det.record(it, [{"responses": ["a"], "verdicts": [None]}])
    assert (none["score"], none["n_judged"], none["unparsed"], none["any_correct"]) == (0.0, 0, 1, False)


def test_majority_response_and_high_confidence_error():
    assert majority_response(["The Red", "red.", "blue"]) == ("The Red", 2 / 3, 0)
    det = detector_for({**DET, "high_conf_threshold": 0.6})
    it = _items(1)[0]
    rec = det.record(it, [{"responses": ["blue", "Blue", "red"], "verdicts": [False, False, True]}])
    assert rec["pred"] == "blue" and rec["high_conf_error"] and rec["any_correct"]


def test_freeform_items_required():
    from kaft.data import MCItem

    det = detector_for(DET)
    det.verifier = make_verifier(None)
    with pytest.raises(DetectionError, match="needs free-form training data"):
        det.run(None, [MCItem("m", "q ?", ["a", "b"], 0)], 0, "general")


def test_sample_freeform_shapes_seeds_and_backend_form(backend):
    items = _items(3)
    out = sample_freeform(backend.model, backend.tokenizer, items, 4, max_new_tokens=3, seed=1, batch_size=4)
    assert [len(per) for per in out] == [4, 4, 4]
    plain = HFBackend(backend.model, backend.tokenizer, batch_size=4, share_prefix=False)  # as sample_freeform builds
    assert out == sample_freeform(plain, None, items, 4, max_new_tokens=3, seed=1)  # a backend: the same draws
    greedy = sample_freeform(backend, None, items, 2, temperature=0.0, max_new_tokens=3)
    assert all(per[0] == per[1] for per in greedy)
    assert sample_prompts(backend, ["Question : red"], 2, 0.0, 2, 0) == [greedy_first(backend)]


def greedy_first(backend):
    return [backend.sample(["Question : red"], 1, 0.0, 2, 0, stop_at_line=True)[0][0].strip()] * 2


def test_until_cuts_before_the_first_stop_token():
    assert _until([5, 6, 2, 7], {2}) == [5, 6]
    assert _until([5, 6], {2}) == [5, 6]
    assert _until([2, 5], {2, 9}) == []


def test_vllm_free_form_decoding_cuts_at_the_stop_token(backend):
    """The vllm backend's free-form path without vllm: its decoding cuts each output before the first stop token, as
    the hf backend does (the engine itself runs only in the ``vllm``-marked tests, with vLLM's own venv)."""
    from kaft.detection.core import line_stop_ids
    from kaft.detection.vllm_backend import VLLMBackend

    vb = object.__new__(VLLMBackend)  # no engine: only the decoding is under test
    vb.tokenizer = backend.tokenizer
    ids = backend.tokenizer(["red green", "blue"], add_special_tokens=False)["input_ids"]
    eos = backend.tokenizer.eos_token_id
    vb._stop = set(line_stop_ids(backend.tokenizer))
    assert eos in vb._stop
    assert vb._decode([ids[0] + [eos] + ids[1], ids[1]]) == ["red green", "blue"]
    vb._stop = None
    assert vb._decode([ids[0] + [eos] + ids[1]]) == ["red green blue"]


def test_stopping_at_a_line_is_the_fixed_length_draw_cut_at_its_first_stop_token(backend):
    """Early stopping changes no draw: each continuation is the fixed-length one (same seed) cut before its first stop
    token, and a batch whose continuations have all stopped decodes no further."""
    import torch

    from kaft.detection.hf_backend import _sample_batch

    tok = backend.tokenizer
    stop = sorted({tok.convert_tokens_to_ids(w) for w in ("red", "blue", "cat", "?", "Answer", "the")})
    prompts = ["Question : What is the capital of Zorvia ? Answer :", "Options : red green Answer :"]

    def run(stop_ids):
        return _sample_batch(
            backend.model, tok, prompts, 4, 1.0, 12, torch.Generator().manual_seed(5), stop_ids=stop_ids
        )

    full, cut = run(None), run(stop)
    for per_full, per_cut in zip(full, cut):
        for f, c in zip(per_full, per_cut):
            ids = tok(f, add_special_tokens=False)["input_ids"]
            assert c == tok.decode(_until(ids, set(stop)), skip_special_tokens=True)
    assert any(f != c for pf, pc in zip(full, cut) for f, c in zip(pf, pc))  # some continuation did stop early
