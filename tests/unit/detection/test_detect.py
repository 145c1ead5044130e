"""Stage 2: diversified probing (KaFT Eq. 1) — orders, shots, parsing, and the batched KV-cache sampler."""

import pytest
import torch

from kaft import detection
from kaft.detection import DetectionError, build_queries, option_orders, parse_answer, score
from kaft.detection.hf_backend import _sample_batch


def test_option_orders_distinct_seeded_identity_first():
    o = option_orders(4, 10, seed=0, item_id="q1")
    assert len(o) == 10 and len({tuple(x) for x in o}) == 10 and o[0] == [0, 1, 2, 3]
    assert all(sorted(x) == [0, 1, 2, 3] for x in o)
    assert o == option_orders(4, 10, 0, "q1") and o != option_orders(4, 10, 1, "q1")
    assert len(option_orders(2, 10, 0, "q")) == 2  # only 2 orders of 2 options exist
    big = option_orders(9, 12, 0, "q")
    assert len({tuple(x) for x in big}) == 12


def test_shots_exclude_the_item_and_queries_cover_orders(mc_items):
    qs = build_queries(mc_items, n_orders=3, k=3, seed=0, domain="geography")
    assert len(qs) == 3 * len(mc_items)
    for q in qs:
        it = mc_items[q.item]
        blocks = q.prompt.split("\n\n")
        assert len(blocks) == 4  # 3 shots + the open question
        assert all(it.question not in b for b in blocks[:3])
        assert blocks[-1].endswith("Answer:")
        shown = [it.options[j] for j in q.order]
        assert all(f"{'ABCD'[p]}. {o}" in blocks[-1] for p, o in enumerate(shown))
    with pytest.raises(DetectionError, match="at least 4 training items"):
        build_queries(mc_items[:3], 1, 3, 0, "x")


@pytest.mark.parametrize(
    "text, want",
    [
        (" A", 0),
        ("B. the dog", 1),
        ("(C)", 2),
        (" D\nQuestion", 3),
        ("The answer is B", 1),
        (" E", -1),
        ("Apple", -1),
        ("", -1),
    ],
)
def test_parse_answer(text, want):
    assert parse_answer(text, 4) == want


def test_score_is_fraction_correct_over_orders_and_samples():
    assert score([[0, 0, 1], [2, 0, -1]], gold=0) == pytest.approx(3 / 6)


def test_kv_cache_sampler_matches_greedy_generate(tiny_model, tiny_tokenizer, mc_items):
    """At a tiny temperature the sampler is greedy: it must agree with HF generate on unpadded single prompts,
    which checks left padding, position ids and the repeated KV cache."""
    tok = tiny_tokenizer
    tok.padding_side = "left"
    qs = build_queries(mc_items, 2, 2, 0, "geography")
    prompts = [q.prompt for q in qs[:6]]
    prompts[0] = prompts[0].split("\n\n")[-1]  # very different lengths in one batch
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        got = _sample_batch(tiny_model, tok, prompts, n=3, temperature=1e-5, max_new_tokens=3, generator=gen)
        for p, samples in zip(prompts, got):
            enc = tok(p, return_tensors="pt")
            out = tiny_model.generate(**enc, do_sample=False, max_new_tokens=3, pad_token_id=0)
            want = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            assert samples == [want] * 3


def test_sampling_frequencies_follow_the_temperature_softmax(tiny_model, tiny_tokenizer, mc_items):
    tok = tiny_tokenizer
    tok.padding_side = "left"
    prompt = build_queries(mc_items, 1, 0, 0, "geography")[0].prompt
    with torch.inference_mode():
        logits = tiny_model(**tok(prompt, return_tensors="pt")).logits[0, -1]
    probs = torch.softmax(logits / 0.7, -1)
    top = int(probs.argmax())
    n = 4000
    got = _sample_batch(
        tiny_model, tok, [prompt], n=n, temperature=0.7, max_new_tokens=1, generator=torch.Generator().manual_seed(1)
    )[0]
    freq = sum(t == tok.decode([top]) for t in got) / n
    p = float(probs[top])
    assert abs(freq - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3


def test_top_k_top_p_sampling_draws_only_from_the_kept_tokens(tiny_model, tiny_tokenizer, mc_items):
    """SMA's sampling (top-k 50, top-p 0.9): with top_k=2 every draw is one of the 2 likeliest tokens, in the
    proportion of their renormalised probabilities; top_k=1 is greedy at any temperature."""
    tok = tiny_tokenizer
    tok.padding_side = "left"
    prompt = build_queries(mc_items, 1, 0, 0, "geography")[0].prompt
    with torch.inference_mode():
        logits = tiny_model(**tok(prompt, return_tensors="pt")).logits[0, -1]
    top2 = torch.topk(logits / 1.4, 2)
    p_first = float(torch.softmax(top2.values, -1)[0])
    n = 3000
    got = _sample_batch(
        tiny_model,
        tok,
        [prompt],
        n=n,
        temperature=1.4,
        max_new_tokens=1,
        generator=torch.Generator().manual_seed(2),
        top_k=2,
        top_p=1.0,
    )[0]
    names = [tok.decode([int(t)]) for t in top2.indices]
    assert set(got) <= set(names)
    freq = got.count(names[0]) / n
    assert abs(freq - p_first) < 4 * (p_first * (1 - p_first) / n) ** 0.5 + 1e-3
    greedy = _backend(tiny_model, tok).sample([prompt], 5, 1.4, 1, 0, top_k=1)[0]
    assert greedy == [names[0]] * 5


def _backend(model, tok, **kw):
    return detection.HFBackend(model, tok, **kw)


BASE = {"num_orders": 3, "num_samples": 4, "temperature": 0.7, "shots": 2, "max_new_tokens": 2, "batch_size": 5}


def test_diversified_records(tiny_model, tiny_tokenizer, mc_items):
    b = _backend(tiny_model, tiny_tokenizer, batch_size=5)
    recs = detection.run_detection(b, mc_items, BASE, seed=0, domain="geography", progress=False)
    again = detection.run_detection(b, mc_items, BASE, seed=0, domain="geography", progress=False)
    assert recs == again  # seeded
    for r, it in zip(recs, mc_items):
        assert r["id"] == it.id and len(r["answers"]) == 3 and all(len(a) == 4 for a in r["answers"])
        assert r["score"] == score(r["answers"], it.answer)
        assert all(-1 <= a < 4 for per in r["answers"] for a in per)
        assert r["unparsed"] == sum(a == -1 for per in r["answers"] for a in per)  # counted as wrong, reported
    with pytest.raises(DetectionError, match="temperature"):
        detection.validate({**BASE, "temperature": 0})
    with pytest.raises(DetectionError, match="unknown detection settings"):
        detection.validate({**BASE, "num_order": 3})
    with pytest.raises(DetectionError, match="estimator"):
        detection.validate({**BASE, "estimator": "exakt"})


def test_permutation_maps_gold_letter_back_to_the_original_option():
    order = [2, 0, 3, 1]  # shown: C-orig at A, A-orig at B, ...
    assert detection.to_original([0.1, 0.2, 0.3, 0.4], order) == [0.2, 0.4, 0.1, 0.3]
    # an answer "B" under this order names original option 0
    assert order[parse_answer(" B", 4)] == 0


def test_cyclic_orders_are_a_latin_square():
    o = option_orders(4, 6, 0, "q", scheme="cyclic")
    assert o[:4] == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]]
    assert all(sorted(col) == [0, 1, 2, 3] for col in zip(*o[:4]))  # every option once in every position
    assert len({tuple(x) for x in o}) == 6


def test_shared_prefix_logits_equal_plain_logits(tiny_model, tiny_tokenizer, mc_items):
    b = _backend(tiny_model, tiny_tokenizer, batch_size=8)
    prompts = [q.prompt for q in build_queries(mc_items[2:], 2, 2, 0, "geography")][:8]
    assert b._prefix_ok(*b._split(prompts[0]))
    shared = b.last_logits(prompts)
    b.share_prefix = False
    plain = b.last_logits(prompts)
    assert torch.allclose(shared, plain, atol=1e-5)


def test_exact_estimator_is_the_limit_of_the_sampled_score(tiny_model, tiny_tokenizer, mc_items):
    """With the answer decided by the first token (max_new_tokens=1), the sampled Score with large Nr converges
    to the exact Score: |difference| within 4 standard errors."""
    b = _backend(tiny_model, tiny_tokenizer, batch_size=8)
    cfg = {**BASE, "max_new_tokens": 1, "num_orders": 2}
    exact = detection.run_detection(b, mc_items[:4], {**cfg, "estimator": "exact"}, 0, "geography", progress=False)
    n = 3000
    sampled = detection.run_detection(b, mc_items[:4], {**cfg, "num_samples": n}, 0, "geography", progress=False)
    for e, s in zip(exact, sampled):
        assert e["orders"] == s["orders"]
        p = e["score"]
        se = (max(p * (1 - p), 1e-4) / (n * 2)) ** 0.5
        assert abs(s["score"] - p) < 4 * se + 1e-3, (e["id"], s["score"], p)


def test_exact_sums_over_letter_tokenizations():
    """Every token a sampled response starting with it parses as that letter; real tokenizers' sets are asserted
    in tests/unit/test_real_tokenizers.py."""

    class Tok:
        vocab = {
            "A": 0,
            " A": 1,
            "▁B": 2,
            "B": 3,
            "C": 4,
            "ĠD": 5,
            "AB": 6,
            "  A": 7,
            "(C": 8,
            "<0x44>": 9,
            "A.": 10,
            "Apple": 11,
            "E": 12,
            "<s>": 13,
        }

        def get_vocab(self):
            return dict(self.vocab)

        def __len__(self):
            return len(self.vocab)

        def batch_decode(self, seqs, skip_special_tokens=False):
            names = {i: t for t, i in self.vocab.items()}
            text = {"<0x44>": "D", "<s>": ""}
            return ["".join(text.get(names[i], names[i].replace("▁", " ").replace("Ġ", " ")) for i in s) for s in seqs]

    assert detection.letter_token_ids(Tok(), 4) == [[0, 1, 7, 10], [2, 3], [4, 8], [5, 9]]
    with pytest.raises(DetectionError, match="no single token"):
        detection.letter_token_ids(type("T", (Tok,), {"vocab": {"A": 0}})(), 2)


def test_icl_records(tiny_model, tiny_tokenizer, mc_items):
    b = _backend(tiny_model, tiny_tokenizer, batch_size=8)
    recs = detection.run_detection(
        b, mc_items, {"name": "icl", "shots": 2, "prompt": "ren"}, 0, "geography", progress=False
    )
    for r, it in zip(recs, mc_items):
        assert r["orders"] == [[0, 1, 2, 3]] and abs(sum(r["letter_probs"]) - 1) < 1e-6
        assert r["pred"] == max(range(4), key=r["letter_probs"].__getitem__)
        assert r["score"] == float(r["pred"] == it.answer)
        assert r["confident"] == (max(r["letter_probs"]) > 0.5)
    q = build_queries(mc_items, 1, 2, 0, "geography", prompt="ren")[0].prompt
    assert q.startswith("The following are multiple choice questions about geography. Please choose the correct")
    assert q.count("Answer:") == 3 and q.endswith("Answer:")


def test_ablation_switches(tiny_model, tiny_tokenizer, mc_items):
    b = _backend(tiny_model, tiny_tokenizer, batch_size=8)
    one = detection.run_detection(b, mc_items, {**BASE, "diverse_query": False}, 0, "g", progress=False)
    assert all(r["orders"] == [[0, 1, 2, 3]] and len(r["answers"][0]) == 4 for r in one)
    greedy = detection.run_detection(b, mc_items, {**BASE, "response_sampling": False}, 0, "g", progress=False)
    assert all(len(r["orders"]) == 3 and all(len(a) == 1 for a in r["answers"]) for r in greedy)
    exact_greedy = detection.run_detection(
        b,
        mc_items,
        {**BASE, "response_sampling": False, "estimator": "exact", "max_new_tokens": 1},
        0,
        "g",
        progress=False,
    )
    # greedy generation of one token and the argmax of the next-token distribution name the same answers
    assert [r["answers"] for r in exact_greedy] == [
        r["answers"]
        for r in detection.run_detection(
            b, mc_items, {**BASE, "response_sampling": False, "max_new_tokens": 1}, 0, "g", progress=False
        )
    ]
    both = detection.run_detection(
        b,
        mc_items,
        {**BASE, "response_sampling": False, "diverse_query": False, "estimator": "exact"},
        0,
        "g",
        progress=False,
    )
    assert all(len(r["answers"]) == 1 and r["score"] in (0.0, 1.0) for r in both)


class _Dies:
    """A backend that raises after ``n`` calls: a run killed mid-probing."""

    def __init__(self, inner, n):
        self.inner, self.n, self.tokenizer = inner, n, inner.tokenizer

    def sample(self, *a, **k):
        if self.n == 0:
            raise KeyboardInterrupt("killed")
        self.n -= 1
        return self.inner.sample(*a, **k)


def test_probing_resumes_from_its_last_chunk(tiny_model, tiny_tokenizer, mc_items, tmp_path):
    b = _backend(tiny_model, tiny_tokenizer, batch_size=4)
    cfg = {**BASE, "chunk_size": 3}
    full = detection.run_detection(b, mc_items, cfg, 0, "g", progress=False)
    with pytest.raises(KeyboardInterrupt):
        detection.run_detection(_Dies(b, 2), mc_items, cfg, 0, "g", progress=False, work_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_00000.jsonl", "chunk_00001.jsonl"]
    calls = _Dies(b, 1)  # only the last chunk may be computed now
    resumed = detection.run_detection(calls, mc_items, cfg, 0, "g", progress=False, work_dir=tmp_path)
    assert resumed == full and calls.n == 0
