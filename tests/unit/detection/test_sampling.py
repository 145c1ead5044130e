"""The sampling SMA's preference pairs use (kaft.detection): the backend gets SMA's settings on the training
prompt, and top-k / top-p filtering matches a hand computation."""

from __future__ import annotations

import torch


def test_sma_sampling_asks_the_backend_for_smas_settings_on_the_training_prompt():
    from kaft.data import MCItem
    from kaft.detection import sample_responses
    from kaft.prompts import format_question

    class Backend:
        def sample(self, prompts, n, temperature, max_new_tokens, seed, top_k=0, top_p=1.0):
            self.call = (prompts, n, temperature, max_new_tokens, seed, top_k, top_p)
            return [[" B", " A\n", "(C)", "zzz"][:n] for _ in prompts]

    items = [MCItem("s0", "question 0 ?", ["w", "x", "y", "z"], 1, domain="geography")]
    be = Backend()
    recs = sample_responses(
        be,
        items,
        {"num_samples": 4, "temperature": 1.4, "top_k": 50, "top_p": 0.9, "max_new_tokens": 4},
        seed=3,
        domain="general",
    )
    assert be.call == ([format_question("question 0 ?", ["w", "x", "y", "z"], "geography")], 4, 1.4, 4, 3, 50, 0.9)
    assert recs == [{"id": "s0", "gold": 1, "answers": [[1, 0, 2, -1]]}]


def test_top_k_top_p_filter_matches_hand_computation():
    from kaft.detection import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    # nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the third token (0.15) is needed; the rest go
    assert keep(filter_logits(logits, top_p=0.8)) == [True, True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.7)) == [True, True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.01)) == [True, False, False, False, False]
    assert torch.equal(filter_logits(logits), logits)
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert keep(filter_logits(shuffled, top_k=4, top_p=0.8)) == [False, True, False, True, True]
