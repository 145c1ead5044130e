"""Every stage on real tokenizers (Mistral 7B's SentencePiece, a tiktoken-style byte-level BPE with and without BOS)
and tiny random models of the real architectures, loaded the way kaft loads a checkpoint (tests/helpers/real_tokenizers.py).

What the testbed's word-level tokenizer cannot show: BOS handling, the space before the letter ("▁A", "ĠA"),
several tokens decoding to one letter ("<0x41>", "(A", "\\tA"), SentencePiece's "▁" at the start of a text."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers.real_tokenizers import MODELS, make_real_model, make_real_tokenizer, save_pair

from kaft import detection, modeling, train
from kaft.data import MCItem
from kaft.losses import pairs
from kaft.prompts import answer_text, format_question

DOMAIN = "geography"
ITEMS = [
    MCItem(
        id=f"q{i}",
        question=f"What is the capital of {c}?",
        options=["Paris", "Rome", "Oslo", "Bern"],
        answer=i % 4,
        domain=DOMAIN,
    )
    for i, c in enumerate(["France", "Italy", "Norway", "Switzerland", "Zorvia", "Melkland"])
]
# the tokens a response starting with letter L is parsed as, per tokenizer (what the exact estimator sums)
LETTER_TOKENS = {
    "spm": [{"A", "▁A", "<0x41>"}, {"B", "▁B", "<0x42>"}, {"C", "▁C", "<0x43>"}, {"D", "▁D", "<0x44>"}],
    "bpe": [{"A", "ĠA", "(A", "ĉA"}, {"B", "ĠB", "(B"}, {"C", "ĠC", "(C", "ĉC"}, {"D", "ĠD", "(D", "ĉD"}],
}
ANSWER_TOKEN = {"spm": "▁{}", "bpe": "Ġ{}"}  # answer_text(i) after "Answer:" is one token: the letter with its space
BOOSTS = (17.0, 16.5, 16.0, 15.5)  # logit boosts of the A-D answer tokens: a model that answers letters


def _family(kind: str) -> str:
    return "spm" if kind == "spm" else "bpe"


pytestmark = pytest.mark.usefixtures("one_thread")


# spm (32k) stays in the quick loop; the two 131k-token BPE vocabularies cost over a minute on 2 cores: slow
PARAMS = [k if k == "spm" else pytest.param(k, marks=pytest.mark.slow) for k in MODELS]


@pytest.fixture(scope="module", params=PARAMS)
def real(request, tmp_path_factory):
    """``(kind, model, tokenizer)`` as :func:`kaft.modeling.load` returns them from a saved checkpoint."""
    kind = request.param
    tok = make_real_tokenizer(kind)
    ids = tok.convert_tokens_to_ids([ANSWER_TOKEN[_family(kind)].format(c) for c in "ABCD"])
    boosts = dict(zip(ids, BOOSTS))
    path = save_pair(kind, tmp_path_factory.mktemp(kind), letter_ids=boosts)
    model, loaded = modeling.load({"source": "local", "path": str(path), "dtype": "float32"}, str(path), "cpu")
    assert type(model).__name__ == MODELS[kind] and model.config.vocab_size == len(loaded) == len(tok)
    return kind, model, loaded


def _prompt(it: MCItem) -> str:
    return format_question(it.question, it.options, DOMAIN)


def test_letter_tokens_bos_and_round_trip(real):
    kind, _, tok = real
    got = [set(tok.convert_ids_to_tokens(ids)) for ids in detection.letter_token_ids(tok, 4)]
    assert got == LETTER_TOKENS[_family(kind)]
    assert train.special_prefix(tok) == ([] if kind == "bpe" else [tok.bos_token_id])
    for q in detection.build_queries(ITEMS, 2, 2, 0, DOMAIN):
        assert tok.decode(tok(q.prompt, add_special_tokens=False)["input_ids"]) == q.prompt
        assert tok.decode(tok(q.prompt)["input_ids"], skip_special_tokens=True) == q.prompt


def test_prefix_sharing_applies_and_is_exact(real):
    """The demonstrations are encoded once per batch on every tokenizer (SentencePiece's lone-suffix "▁" used to
    turn sharing off), and the shared logits equal the unshared ones."""
    _, model, tok = real
    b = detection.HFBackend(model, tok, batch_size=8)
    prompts = [q.prompt for q in detection.build_queries(ITEMS, 2, 2, 0, DOMAIN)]
    prefix = max({b._split(p)[0] for p in prompts}, key=lambda x: sum(b._split(p)[0] == x for p in prompts))
    prompts = [p for p in prompts if b._split(p)[0] == prefix]  # the items that share their demonstrations
    assert len(prompts) >= 4
    suffixes = b._suffix_ids(prefix, prompts)
    assert suffixes is not None
    whole = tok(prompts)["input_ids"]
    assert [tok(prefix)["input_ids"] + s for s in suffixes] == whole
    shared = b.last_logits(prompts)
    b.share_prefix = False
    assert torch.allclose(shared, b.last_logits(prompts), atol=1e-4)


def test_exact_score_agrees_with_sampled(real):
    """The sampled Score equals the exact one within 4 standard errors when the model spreads its answers over
    every token of a letter ("▁A", "A", "<0x41>"; "ĠA", "A", "(A", "\\tA"): exact must sum them all (it used to
    miss the byte and "(" / tab tokens, a third of the mass here)."""
    kind, _, tok = real
    variants = [tok.convert_tokens_to_ids(sorted(v)) for v in LETTER_TOKENS[_family(kind)]]
    model = make_real_model(kind, len(tok), letter_ids={i: b for ids, b in zip(variants, BOOSTS) for i in ids})
    b = detection.HFBackend(model, tok, batch_size=1)
    cfg = {"num_orders": 2, "shots": 2, "max_new_tokens": 1, "temperature": 0.7, "batch_size": 1}
    items = ITEMS[:3]
    exact = detection.run_detection(b, items, {**cfg, "estimator": "exact"}, 0, DOMAIN, progress=False)
    n = 200
    sampled = detection.run_detection(b, items, {**cfg, "num_samples": n}, 0, DOMAIN, progress=False)
    for e, s in zip(exact, sampled):
        assert e["orders"] == s["orders"]
        assert all(sum(p) > 0.9 for p in e["probs"]) and s["unparsed"] < 0.1 * 2 * n  # answers are letters
        p = e["score"]
        se = (max(p * (1 - p), 1e-3) / (2 * n)) ** 0.5
        assert abs(s["score"] - p) < 4 * se, (e["id"], s["score"], p)
    assert len({round(e["score"], 3) for e in exact}) > 1  # gold letters differ: Scores differ


def test_label_mask_is_exactly_the_answer_token(real):
    """Training input = what probing encodes + one label token: the letter with its space, one of the tokens the
    exact estimator sums."""
    kind, _, tok = real
    rows = train.build_examples(tok, ITEMS, [1.0] * len(ITEMS), DOMAIN, None, 512)
    letters = detection.letter_token_ids(tok, 4)
    for it, row in zip(ITEMS, rows):
        ids, labels = row["input_ids"], row["labels"]
        want = tok.convert_tokens_to_ids(ANSWER_TOKEN[_family(kind)].format("ABCD"[it.answer]))
        assert labels == [-100] * (len(ids) - 1) + [want] and want in letters[it.answer]
        assert ids[:-1] == tok(_prompt(it))["input_ids"]  # the probed context, BOS included where the tokenizer adds it
        assert tok.decode(ids, skip_special_tokens=True) == _prompt(it) + answer_text(it.answer)


def test_dpo_pairs_and_training(real, tmp_path):
    """SMA's sampled responses parse on the real tokenizer, every pair is one sequence (answers differ in the last
    token only), and LoRA SFT and DPO steps run on the real vocabulary."""
    kind, model, tok = real
    b = detection.HFBackend(model, tok, batch_size=4)
    sampling = {"num_samples": 8, "temperature": 1.4, "top_k": 50, "top_p": 0.9, "max_new_tokens": 4}
    records = detection.sample_responses(b, ITEMS, sampling, 0, DOMAIN)
    flat = [a for r in records for per in r["answers"] for a in per]
    assert sum(a >= 0 for a in flat) / len(flat) > 0.9 and len(set(flat)) > 1
    built = pairs.build_pairs(ITEMS, records, "dataset_self", 8, 0, domain=DOMAIN, source="sma")
    assert built
    rows = train.build_pair_examples(tok, built, [1.0] * len(ITEMS), 512)
    fmt = ANSWER_TOKEN[_family(kind)]
    for p, r in zip(built, rows):
        assert train.shares_sequence(r)
        assert [x for x in r["chosen_labels"] if x != -100] == [
            tok.convert_tokens_to_ids(fmt.format("ABCD"[p["chosen_option"]]))
        ]
        assert [x for x in r["rejected_labels"] if x != -100] == [
            tok.convert_tokens_to_ids(fmt.format("ABCD"[p["rejected_option"]]))
        ]
    cfg = {
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "epochs": 1,
        "max_length": 512,
        "weight_decay": 0.0,
        "grad_accum": 1,
        "lr_scheduler": "constant",
        "logging_steps": 1,
        "lora": {"r": 2, "lora_alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    for loss, recs in (
        ({"name": "constant"}, None),
        ({"name": "dpo", "pair_source": "sma", "pairs": "dataset_self"}, records),
    ):
        tuned = train.train_lora(
            copy.deepcopy(model),
            tok,
            ITEMS[:4],
            [1.0] * 4,
            train.TrainSpec(loss=loss, train=cfg, seed=0, domain=DOMAIN),
            tmp_path / loss["name"],
            records=recs[:4] if recs else None,
        )
        log = json.loads((tmp_path / loss["name"] / "train_log.json").read_text())
        assert math.isfinite(log["train_loss"]) and log["global_step"] >= 1 and tuned.training is False


def test_evaluation_scores_the_trained_tokens(real, tmp_path):
    """lm-eval, in memory, scores each option with exactly the tokens training puts the loss on."""
    from kaft.evaluate import evaluate

    _, model, tok = real
    res = evaluate(model, tok, {"bench": ITEMS[:4]}, tmp_path, DOMAIN, batch_size=2, per_item=True)
    for it, row in zip(ITEMS[:4], res["benchmarks"]["bench"]["items"]):
        ref = []
        for k in range(4):
            ids, labels = train.encode_example(tok, _prompt(it), answer_text(k), 512)
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -2].float(), -1)
            ref.append(float(lp[labels[-1]]))
        assert row["logprobs"] == pytest.approx(ref, abs=1e-4)


def test_sampling_prefill_keeps_only_the_last_logits(real):
    """On a 32k-131k vocabulary full prefill logits are batch × prompt length × V floats; the sampler computes the
    last position's only."""
    _, model, tok = real
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        detection.HFBackend(model, tok, batch_size=4).sample([_prompt(it) for it in ITEMS[:3]], 2, 0.7, 2, 0)
    finally:
        hook.remove()
    assert len(shapes) == 3 * 2 and all(s[1] == 1 for s in shapes)  # 3 prompts (own batches) × 2 steps
