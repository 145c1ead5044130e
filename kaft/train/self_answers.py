"""The feed of ``loss=sft_self`` (``needs = "self_answers"``): SFT examples built from the model's own correct
answers (its sampled, judged responses), one per kept answer, trained like any weighted SFT batch."""

from __future__ import annotations

import json
from collections.abc import Sequence

from kaft.train.examples import encode_example


def self_answer_rows(
    loss,
    tokenizer,
    items: Sequence,
    weights: Sequence[float],
    records,
    seed: int,
    domain: str,
    instruction: str | None,
    max_length: int,
):
    """``(rows, documented answers)``: each answer ``loss.make_examples`` keeps as an SFT example weighted by its
    item's reward."""
    rows, kept = [], []
    for i, prompt, target in loss.make_examples(items, records, seed, domain, instruction):
        ids, labels = encode_example(tokenizer, prompt, target, max_length)
        rows.append({"input_ids": ids, "labels": labels, "weights": float(weights[i])})
        kept.append({"index": i, "id": items[i].id, "prompt": prompt, "target": target})
    return rows, "".join(json.dumps(k) + "\n" for k in kept)
