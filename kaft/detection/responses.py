"""Sampling the model's own answers: SMA's diversity sampling (``loss=dpo pair_source=sma``) to its *training*
prompts, and free-form responses (:func:`sample_freeform`, :func:`sample_prompts`: generative detection's sampler,
and SMA's source of free-form DPO pairs).

It lives with detection because it is probing in all but the prompt — a backend samples, :func:`parse_answer`
reads the letter — while :mod:`kaft.losses.pairs` only turns answers into preference pairs, with no model in sight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kaft import targets
from kaft.detection.core import parse_answer
from kaft.detection.hf_backend import HFBackend
from kaft.items import FreeFormItem, MCItem
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


def answer_line(text: str) -> str:
    """A sampled continuation as a free-form answer: its first line, without the space that follows "Answer:"."""
    return str(text).strip().split("\n", 1)[0].strip()


def sample_prompts(
    backend,
    prompts: Sequence[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[list[str]]:
    """``n`` free-form answers per prompt from a probing backend: the ``n`` samples of a prompt decode from one shared
    prefill, each ends at its first newline or end-of-sequence token (``stop_at_line``), and is returned as its
    :func:`answer_line`. Deterministic per ``seed``."""
    texts = backend.sample(
        list(prompts),
        int(n),
        float(temperature),
        int(max_new_tokens),
        int(seed),
        top_k=int(top_k),
        top_p=float(top_p),
        stop_at_line=True,
    )
    return [[answer_line(t) for t in per] for per in texts]


def sample_freeform(
    model,
    tokenizer,
    items: Sequence[FreeFormItem],
    n: int,
    temperature: float = 0.7,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    *,
    domain: str = "general",
    instruction: str | None = None,
    batch_size: int = 16,
) -> list[list[str]]:
    """``n`` sampled free-form responses per item to its zero-shot training prompt (:func:`kaft.targets.prompt`: the
    free-form block of :func:`kaft.prompts.format_freeform`, as training and generative evaluation see it), in item
    order: ``out[i][j]`` is item ``i``'s ``j``-th response, its first line (SMA §3: n = 8 at T = 1.4, top-k 50,
    top-p 0.9 for Qwen2 — pass those; the defaults are KaFT's T = 0.7 and no top-k / top-p).

    ``model`` / ``tokenizer``: an in-memory transformers model and its tokenizer (batched ``batch_size`` prompts at a
    time, one prefill per prompt shared by its ``n`` samples); or ``model`` a probing backend (``hf`` / ``vllm``,
    :mod:`kaft.detection.backends`) and ``tokenizer`` None. Judge the responses with
    :func:`kaft.verifiers.make_verifier` (``verifier.judge(items, responses)``)."""
    backend = model if tokenizer is None else HFBackend(model, tokenizer, batch_size, share_prefix=False)
    prompts = [targets.prompt(it, it.domain or domain, instruction) for it in items]
    return sample_prompts(backend, prompts, n, temperature, max_new_tokens, seed, top_k, top_p)
