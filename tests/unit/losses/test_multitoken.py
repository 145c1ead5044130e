"""Every loss on multi-token targets, against its closed form: sample losses weight a sample's MEAN token CE,
token losses (eaft, dft, kaft_eaft) weight EACH token (EAFT Eq. 2-3, detached), DPO compares whole responses
(log-probabilities summed over the response tokens, as TRL's DPO), and the one-sequence shortcut of one-letter pairs
scores what two sequences would. Logits are written by hand so every number below is worked out with ``math``."""

from __future__ import annotations

import math

import pytest
import torch

from kaft import losses

pytestmark = pytest.mark.usefixtures("one_thread")

V = 3
# the rows that predict label tokens (position t predicts labels[t + 1]) and their targets
ROWS = {  # (sample, position) -> (logits row, target token)
    (0, 0): ([0.0, 0.0, 0.0], 0),
    (0, 1): ([math.log(3.0), 0.0, 0.0], 0),
    (0, 2): ([0.0, 2.0, 0.0], 2),
    (1, 2): ([1.0, 0.0, -1.0], 1),
}
WEIGHTS = [0.1, 1.0]  # sample rewards: KaFT's alpha for sample 0


def _batch():
    logits = torch.zeros(2, 4, V)
    labels = torch.full((2, 4), -100)
    for (b, t), (row, tok) in ROWS.items():
        logits[b, t] = torch.tensor(row)
        labels[b, t + 1] = tok
    return logits, labels


def _logp(row, tok):
    return row[tok] - math.log(sum(math.exp(x) for x in row))


def _ce():
    return {k: -_logp(row, tok) for k, (row, tok) in ROWS.items()}


def _top2_entropy(row):
    top = sorted(row, reverse=True)[:2]
    z = sum(math.exp(x) for x in top)
    return -sum(math.exp(x) / z * (x - math.log(z)) for x in top)


@pytest.mark.parametrize("name", ["constant", "kaft", "auto_adapt"])
def test_sample_losses_weight_each_samples_mean_token_ce(name):
    ce = _ce()
    mean0 = (ce[0, 0] + ce[0, 1] + ce[0, 2]) / 3  # sample 0: three label tokens
    want = (WEIGHTS[0] * mean0 + WEIGHTS[1] * ce[1, 2]) / 2
    cfg = {"name": name} if name != "kaft" else {"name": "kaft", "alpha": 0.1, "beta": 0.5}
    got = losses.compute_loss(cfg, *_batch(), WEIGHTS)
    assert got.item() == pytest.approx(want, rel=1e-6)
    token_mean = (WEIGHTS[0] * (ce[0, 0] + ce[0, 1] + ce[0, 2]) + ce[1, 2]) / 4
    assert got.item() != pytest.approx(token_mean, rel=1e-3)  # a sample's tokens share its one weight


def test_eaft_weights_each_token_by_its_normalised_top_k_entropy():
    ce = _ce()
    g = {k: _top2_entropy(row) / 3.0 for k, (row, _) in ROWS.items()}  # EAFT Eq. 3: H_top-k / 3 (~ ln 20)
    assert len({round(v, 6) for k, v in g.items() if k[0] == 0}) == 3  # three different weights in one target
    want = sum(g[k] * ce[k] for k in ROWS) / len(ROWS)  # Eq. 2: mean over the N label tokens
    cfg = {"name": "eaft", "top_k": 2}
    assert losses.compute_loss(cfg, *_batch(), [1.0, 1.0]).item() == pytest.approx(want, rel=1e-6)
    want_kaft = sum(WEIGHTS[k[0]] * g[k] * ce[k] for k in ROWS) / len(ROWS)
    cfg = {"name": "kaft_eaft", "alpha": 0.1, "beta": 0.5, "top_k": 2}
    assert losses.compute_loss(cfg, *_batch(), WEIGHTS).item() == pytest.approx(want_kaft, rel=1e-6)


def test_dft_weights_each_token_by_its_own_probability():
    ce = _ce()
    want = sum(math.exp(-ce[k]) * ce[k] for k in ROWS) / len(ROWS)
    assert losses.compute_loss({"name": "dft"}, *_batch(), [1.0, 1.0]).item() == pytest.approx(want, rel=1e-6)


def test_token_weights_carry_no_gradient():
    """d loss / d logits at a label row = g_t / N * (softmax - onehot): the weight is a constant (detached)."""
    logits, labels = _batch()
    logits.requires_grad_(True)
    losses.compute_loss({"name": "eaft", "top_k": 2}, logits, labels, [1.0, 1.0]).backward()
    for (b, t), (row, tok) in ROWS.items():
        z = sum(math.exp(x) for x in row)
        soft = [math.exp(x) / z - (i == tok) for i, x in enumerate(row)]
        want = [_top2_entropy(row) / 3.0 / len(ROWS) * s for s in soft]
        assert logits.grad[b, t].tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_dpo_compares_whole_responses_by_summed_log_probs():
    logits, labels = _batch()
    lp = losses.sequence_logps(logits, labels)
    sums = [sum(_logp(*ROWS[k]) for k in ROWS if k[0] == b) for b in (0, 1)]
    assert lp.tolist() == pytest.approx(sums, rel=1e-6)  # sample 0: three tokens summed, not averaged
    ref = losses.sequence_logps(logits * 0.5, labels)
    beta = 0.1
    margin = beta * ((lp[0] - ref[0]) - (lp[1] - ref[1]))
    want = math.log1p(math.exp(-margin.item()))  # -log sigmoid(margin)
    assert losses.dpo_loss(lp[:1], lp[1:], ref[:1], ref[1:], beta).item() == pytest.approx(want, rel=1e-6)


def test_one_sequence_shortcut_scores_what_two_sequences_do():
    """Pairs that differ only in their last token (one-letter answers, or responses that share all but the last
    token) read both from one sequence; any longer difference takes two rows. Either way the log-probs equal the
    two-sequence ones."""
    from helpers.train import make_model, make_tokenizer

    from kaft import train

    tok = make_tokenizer()
    model = make_model(len(tok)).eval()
    pairs = [
        {"index": 0, "prompt": "what colour is the sky ?", "chosen": " A", "rejected": " B"},
        {"index": 0, "prompt": "what colour is the sky ?", "chosen": " the sky is blue", "rejected": " is red"},
        {"index": 0, "prompt": "which animal barks ?", "chosen": " a dog", "rejected": " a cat"},
    ]
    rows = train.build_pair_examples(tok, pairs, [1.0], 64)
    assert [train.shares_sequence(r) for r in rows] == [True, False, True]
    got = {}
    for share in (True, False):
        batch = train.PairCollator(tok.pad_token_id, share=share)(rows)
        assert batch["input_ids"].size(0) == (4 if share else 6)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got[share] = [
            losses.sequence_logps(logits, batch[f"{side}_labels"], batch[f"{side}_row"])
            for side in ("chosen", "rejected")
        ]
    for a, b in zip(got[True], got[False]):
        assert torch.allclose(a, b, atol=1e-5)
