"""Preference pairs for DPO: SMA's construction from fresh samples, or distinct wrong letters from detection's.

Two constructions (``loss.pair_source``):

* ``sma`` (default) — Self-Memory Alignment (Zhang et al.) as the paper builds it: n = 8 responses per query sampled
  at SMA's settings (§4.1: "We set top-k=50, top-p=0.9, temperature=1.4 for Qwen2"; :func:`sample_responses`,
  prompt = the training prompt), judged against the reference; "the number of preference pairs (= correct count ×
  incorrect count)" per question is "randomly down-sample[d] up to m pairs" (§3, m = 8). So a wrong answer sampled
  often gives proportionally more pairs (with one-letter answers, repeated pairs are identical and weigh more).
  Unparsable responses are discarded, as SMA discards uncertain verdicts.
* ``detection`` — no extra generation: from the detection stage's No × Nr samples, one pair per *distinct* wrong
  option the model named (repeats merged), the most frequent first (ties broken by a seeded draw per item), at most
  ``max_pairs`` per item.

Chosen response (``pairs``, registry :data:`CHOSEN`):

* ``self_self`` — a correct answer the model sampled itself (SMA's main setting): under ``sma`` every correct sample
  is a chosen response (correct × incorrect pairs); items never answered correctly contribute none.
* ``dataset_self`` — the reference answer (gold) of the data set: under ``sma`` one chosen × each incorrect sample.

The prompt is the training prompt (:func:`kaft.prompts.format_question`, original option order — sampled answers
are stored as original option indices) and chosen / rejected are :func:`kaft.prompts.answer_text` of the options.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Callable, Mapping, Sequence

from kaft.data import MCItem
from kaft.prompts import DEFAULT_INSTRUCTION, answer_text, format_question


def _chosen_dataset_self(gold: int, counts: Counter) -> int | None:
    return gold


def _chosen_self_self(gold: int, counts: Counter) -> int | None:
    return gold if counts.get(gold, 0) > 0 else None


#: ``pairs`` mode -> the chosen option of an item (or None: no pairs), given its gold index and answer counts
CHOSEN: dict[str, Callable[[int, Counter], int | None]] = {
    "dataset_self": _chosen_dataset_self,
    "self_self": _chosen_self_self,
}


#: ``pairs`` mode -> the chosen responses of an item under ``sma`` (option indices, one per response)
PRODUCT_CHOSEN: dict[str, Callable[[int, list[int]], list[int]]] = {
    "dataset_self": lambda gold, flat: [gold],
    "self_self": lambda gold, flat: [a for a in flat if a == gold],
}
PAIR_SOURCES = ("sma", "detection")


def _rng(seed: int, item_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|pairs|{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def has_samples(records: Sequence[Mapping] | None) -> bool:
    """Whether any detection record carries sampled answers."""
    return bool(records) and any(r.get("answers") for r in records)


def _distinct_options(mode: str, gold: int, flat: list[int], max_pairs: int, rng: random.Random) -> list[tuple]:
    """``pair_source=detection``: (chosen, rejected) per distinct wrong option, most frequent first."""
    counts = Counter(a for a in flat if a >= 0)
    chosen = CHOSEN[mode](gold, counts)
    wrong = sorted(a for a in counts if a != gold)
    if chosen is None or not wrong:
        return []
    tie = {a: rng.random() for a in wrong}
    wrong.sort(key=lambda a: (-counts[a], tie[a]))
    return [(chosen, a) for a in wrong[:max_pairs]]


def _sampled_product(mode: str, gold: int, flat: list[int], max_pairs: int, rng: random.Random) -> list[tuple]:
    """``pair_source=sma``: every chosen response × every incorrect one, randomly down-sampled to ``max_pairs``
    (seeded per item), kept in product order."""
    chosen = PRODUCT_CHOSEN[mode](gold, flat)
    rejected = [a for a in flat if a >= 0 and a != gold]
    pairs = [(c, r) for c in chosen for r in rejected]
    if len(pairs) > max_pairs:
        pairs = [pairs[j] for j in sorted(rng.sample(range(len(pairs)), max_pairs))]
    return pairs


CONSTRUCTIONS = {"detection": _distinct_options, "sma": _sampled_product}


def _flat_answers(i: int, it: MCItem, rec: Mapping) -> list[int]:
    if str(rec.get("id")) != str(it.id):
        raise ValueError(f"build_pairs: record {i} is for item {rec.get('id')!r} but item {i} is {it.id!r}; the "
                         f"detection records do not belong to these items")
    if "gold" in rec and int(rec["gold"]) != it.answer:
        raise ValueError(f"build_pairs: record {i} ({it.id!r}) has gold {rec['gold']} but the item's answer is "
                         f"{it.answer}")
    flat = [int(a) for per in (rec.get("answers") or []) for a in per]
    bad = [a for a in flat if not -1 <= a < len(it.options)]
    if bad:
        raise ValueError(f"build_pairs: record {i} ({it.id!r}) names option {bad[0]} but the item has "
                         f"{len(it.options)} options")
    return flat


def build_pairs(items: Sequence[MCItem], records: Sequence[Mapping], mode: str, max_pairs: int, seed: int,
                domain: str = "general", instruction: str | None = None, source: str = "detection") -> list[dict]:
    """DPO pairs, in item order, at most ``max_pairs`` per item (see the module docstring for ``mode`` and
    ``source``).

    ``records[i]`` is item i's record (``id``, optional ``gold``, ``answers[j][s]`` = original option index named by
    sample s under order j, -1 unparsable). Each pair is ``{"index": i, "id", "prompt", "chosen", "rejected",
    "chosen_option", "rejected_option", "count"}`` with ``count`` = how many samples named the rejected option.
    Deterministic in ``seed`` (tie-breaks, down-sampling) and independent of the other items. Items without samples
    or without a wrong sample contribute none.
    """
    if mode not in CHOSEN:
        raise ValueError(f"build_pairs: unknown mode {mode!r}; choose one of {sorted(CHOSEN)}")
    if source not in CONSTRUCTIONS:
        raise ValueError(f"build_pairs: unknown source {source!r}; choose one of {list(CONSTRUCTIONS)}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"build_pairs: max_pairs must be a positive integer, got {max_pairs!r}")
    if len(items) != len(records):
        raise ValueError(f"build_pairs: {len(items)} items but {len(records)} detection records; they must be the "
                         f"same items in the same order")
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    out: list[dict] = []
    for i, (it, rec) in enumerate(zip(items, records)):
        flat = _flat_answers(i, it, rec)
        options = CONSTRUCTIONS[source](mode, it.answer, flat, max_pairs, _rng(seed, str(it.id)))
        if not options:
            continue
        counts = Counter(flat)
        prompt = format_question(it.question, it.options, it.domain or domain, instruction)
        for c, a in options:
            out.append({"index": i, "id": it.id, "prompt": prompt, "chosen": answer_text(c),
                        "rejected": answer_text(a), "chosen_option": c, "rejected_option": a, "count": counts[a]})
    return out


def sample_responses(backend, items: Sequence[MCItem], sampling: Mapping, seed: int, domain: str = "general",
                     instruction: str | None = None) -> list[dict]:
    """SMA's diversity sampling: ``sampling["num_samples"]`` responses per item to its training prompt at
    ``temperature`` / ``top_k`` / ``top_p`` (``max_new_tokens`` each), parsed to original option indices (-1
    unparsable). Returns records ``{"id", "gold", "answers": [[...]]}`` that :func:`build_pairs` reads."""
    from kaft.detect import parse_answer

    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    prompts = [format_question(it.question, it.options, it.domain or domain, instruction) for it in items]
    texts = backend.sample(prompts, int(sampling["num_samples"]), float(sampling["temperature"]),
                           int(sampling["max_new_tokens"]), int(seed), top_k=int(sampling["top_k"]),
                           top_p=float(sampling["top_p"]))
    return [{"id": it.id, "gold": it.answer, "answers": [[parse_answer(t, len(it.options)) for t in resp]]}
            for it, resp in zip(items, texts)]
