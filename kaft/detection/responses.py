"""SMA's diversity sampling (``loss=dpo pair_source=sma``): the model's own answers to its *training* prompts.

It lives with detection because it is probing in all but the prompt — a backend samples, :func:`parse_answer`
reads the letter — while :mod:`kaft.losses.pairs` only turns answers into preference pairs, with no model in sight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kaft.detection.core import parse_answer
from kaft.items import MCItem
from kaft.prompts import DEFAULT_INSTRUCTION, format_question


def sample_responses(
    backend,
    items: Sequence[MCItem],
    sampling: Mapping,
    seed: int,
    domain: str = "general",
    instruction: str | None = None,
) -> list[dict]:
    """``sampling["num_samples"]`` responses per item to its training prompt at ``temperature`` / ``top_k`` /
    ``top_p`` (``max_new_tokens`` each), parsed to original option indices (-1 unparsable). Returns records
    ``{"id", "gold", "answers": [[...]]}`` that :func:`kaft.losses.pairs.build_pairs` reads."""
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    prompts = [format_question(it.question, it.options, it.domain or domain, instruction) for it in items]
    texts = backend.sample(
        prompts,
        int(sampling["num_samples"]),
        float(sampling["temperature"]),
        int(sampling["max_new_tokens"]),
        int(seed),
        top_k=int(sampling["top_k"]),
        top_p=float(sampling["top_p"]),
    )
    return [
        {"id": it.id, "gold": it.answer, "answers": [[parse_answer(t, len(it.options)) for t in resp]]}
        for it, resp in zip(items, texts)
    ]
