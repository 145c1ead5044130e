"""How the testbed model answers multiple choice: next-token letter probabilities and accuracy by kind of fact.

Shared by the build (the release bisections read accuracy and confidence on format facts) and the report, so
neither imports the other.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from kaft.items import MCItem
from kaft.prompts import few_shot_prompt
from kaft.testbed.tokenizer import letter_ids


def letter_probs(
    model, tok, prompts: Sequence[str], n_options: int = 4, temperature: float = 1.0, batch_size: int = 32
):
    """``[len(prompts), n_options]`` probabilities of the letter tokens " A", " B", ... as the next token, from a
    softmax over the full vocabulary at ``temperature`` (left-padded batches, positions counted from the text)."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    letters = letter_ids(tok, n_options)
    old = tok.padding_side
    tok.padding_side = "left"
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = (
                    model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos)
                    .logits[:, -1, :]
                    .float()
                )
                out.append(torch.softmax(logits / temperature, dim=-1)[:, letters])
    finally:
        tok.padding_side = old
    return torch.cat(out)


def _correct(model, tok, items: Sequence[MCItem], prompts: Sequence[str], batch_size: int = 32) -> list[int]:
    pred = letter_probs(model, tok, prompts, batch_size=batch_size).argmax(-1).tolist()
    return [int(p == it.answer) for it, p in zip(items, pred)]


def _by_kind(items: Sequence[MCItem], correct: Sequence[int]) -> dict:
    by: dict[str, list[int]] = {}
    for it, c in zip(items, correct):
        by.setdefault(it.meta["kind"], []).append(c)
        by.setdefault("all", []).append(c)
    return {**{kind: statistics.fmean(v) for kind, v in sorted(by.items())}, "n": len(items)}


def accuracy_by_kind(
    model, tok, items: Sequence[MCItem], prompts: Sequence[str] | None = None, batch_size: int = 32
) -> dict:
    """Accuracy (argmax over the option letters) of ``items`` by kind, plus ``all`` and ``n``; 0-shot prompts
    unless ``prompts`` are given."""
    if prompts is None:
        prompts = [few_shot_prompt([], it.question, it.options, it.domain or "general") for it in items]
    return _by_kind(items, _correct(model, tok, items, prompts, batch_size))
