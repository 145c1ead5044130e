"""Preference pairs for DPO: SMA's construction from fresh samples, or distinct wrong letters from detection's.

Why under :mod:`kaft.losses`: which pairs a preference loss trains on is part of the loss's definition — its
settings are checked against the pair modes and sources registered here (:data:`PAIR_MODES`,
:data:`PAIR_SOURCES`), and a source declares whether the loss samples its own responses — while :mod:`kaft.train`
only tokenises the pairs the loss builds; kaft.train imports kaft.losses, never the reverse.

Two constructions (``loss.pair_source``, registry :data:`PAIR_SOURCES`):

* ``sma`` (default) — Self-Memory Alignment (Zhang et al.) as the paper builds it: n = 8 responses per query sampled
  at SMA's settings (§4.1: "We set top-k=50, top-p=0.9, temperature=1.4 for Qwen2";
  :func:`kaft.detection.sample_responses`, prompt = the training prompt), judged against the reference; "the
  number of preference pairs (= correct count × incorrect count)" per question is "randomly down-sample[d] up to m
  pairs" (§3, m = 8). So a wrong answer sampled often gives proportionally more pairs (with one-letter answers,
  repeated pairs are identical and weigh more). Unparsable responses are discarded, as SMA discards uncertain
  verdicts.
* ``detection`` — no extra generation: from the detection stage's No × Nr samples, one pair per *distinct* wrong
  option the model named (repeats merged), the most frequent first (ties broken by a seeded draw per item), at most
  ``max_pairs`` per item.

Chosen response (``pairs``, registry :data:`PAIR_MODES`):

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kaft.data import MCItem
from kaft.errors import KaftError
from kaft.prompts import DEFAULT_INSTRUCTION, answer_text, format_question
from kaft.registry import Registry


class PairError(KaftError):
    """Sampled answers that cannot give preference pairs for these items (or an impossible pair setting)."""


@dataclass(frozen=True)
class ChosenRule:
    """Which answer is the chosen one of an item under one ``pairs`` mode."""

    #: ``pair_source=detection``: the chosen option given the gold index and the answer counts (None: no pairs)
    distinct: Callable[[int, Counter], int | None]
    #: ``pair_source=sma``: the chosen responses (option indices, one per response) given gold and all answers
    product: Callable[[int, list[int]], list[int]]


#: ``pairs`` mode -> its :class:`ChosenRule`
PAIR_MODES: Registry[ChosenRule] = Registry("pairs mode")
PAIR_MODES.register("dataset_self", ChosenRule(distinct=lambda gold, counts: gold, product=lambda gold, flat: [gold]))
PAIR_MODES.register(
    "self_self",
    ChosenRule(
        distinct=lambda gold, counts: gold if counts.get(gold, 0) > 0 else None,
        product=lambda gold, flat: [a for a in flat if a == gold],
    ),
)


def _rng(seed: int, item_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|pairs|{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def has_samples(records: Sequence[Mapping] | None) -> bool:
    """Whether any detection record carries sampled answers."""
    return bool(records) and any(r.get("answers") for r in records)


def _distinct_options(mode: str, gold: int, flat: list[int], max_pairs: int, rng: random.Random) -> list[tuple]:
    """``pair_source=detection``: (chosen, rejected) per distinct wrong option, most frequent first."""
    counts = Counter(a for a in flat if a >= 0)
    chosen = PAIR_MODES.get(mode).distinct(gold, counts)
    wrong = sorted(a for a in counts if a != gold)
    if chosen is None or not wrong:
        return []
    tie = {a: rng.random() for a in wrong}
    wrong.sort(key=lambda a: (-counts[a], tie[a]))
    return [(chosen, a) for a in wrong[:max_pairs]]


def _sampled_product(mode: str, gold: int, flat: list[int], max_pairs: int, rng: random.Random) -> list[tuple]:
    """``pair_source=sma``: every chosen response × every incorrect one, randomly down-sampled to ``max_pairs``
    (seeded per item), kept in product order."""
    chosen = PAIR_MODES.get(mode).product(gold, flat)
    rejected = [a for a in flat if a >= 0 and a != gold]
    pairs = [(c, r) for c in chosen for r in rejected]
    if len(pairs) > max_pairs:
        pairs = [pairs[j] for j in sorted(rng.sample(range(len(pairs)), max_pairs))]
    return pairs


@dataclass(frozen=True)
class PairSource:
    """Where a preference loss's sampled answers come from and how they become pairs."""

    #: (mode, gold, flat answers, max_pairs, rng) -> [(chosen option, rejected option)]
    construct: Callable[[str, int, list[int], int, random.Random], list[tuple]]
    #: True: the loss samples its own responses before training (:func:`kaft.detection.sample_responses`);
    #: False: it reads the detection's saved samples
    own_sampling: bool


#: ``pair_source`` -> its :class:`PairSource`
PAIR_SOURCES: Registry[PairSource] = Registry("pair_source")
PAIR_SOURCES.register("sma", PairSource(_sampled_product, own_sampling=True))
PAIR_SOURCES.register("detection", PairSource(_distinct_options, own_sampling=False))


def _flat_answers(i: int, it: MCItem, rec: Mapping) -> list[int]:
    if str(rec.get("id")) != str(it.id):
        raise PairError(
            f"build_pairs: record {i} is for item {rec.get('id')!r} but item {i} is {it.id!r}; the "
            f"detection records do not belong to these items"
        )
    if "gold" in rec and int(rec["gold"]) != it.answer:
        raise PairError(
            f"build_pairs: record {i} ({it.id!r}) has gold {rec['gold']} but the item's answer is {it.answer}"
        )
    flat = [int(a) for per in (rec.get("answers") or []) for a in per]
    bad = [a for a in flat if not -1 <= a < len(it.options)]
    if bad:
        raise PairError(
            f"build_pairs: record {i} ({it.id!r}) names option {bad[0]} but the item has {len(it.options)} options"
        )
    return flat


def build_pairs(
    items: Sequence[MCItem],
    records: Sequence[Mapping],
    mode: str,
    max_pairs: int,
    seed: int,
    domain: str = "general",
    instruction: str | None = None,
    source: str = "detection",
) -> list[dict]:
    """DPO pairs, in item order, at most ``max_pairs`` per item (see the module docstring for ``mode`` and
    ``source``).

    ``records[i]`` is item i's record (``id``, optional ``gold``, ``answers[j][s]`` = original option index named by
    sample s under order j, -1 unparsable). Each pair is ``{"index": i, "id", "prompt", "chosen", "rejected",
    "chosen_option", "rejected_option", "count"}`` with ``count`` = how many samples named the rejected option.
    Deterministic in ``seed`` (tie-breaks, down-sampling) and independent of the other items. Items without samples
    or without a wrong sample contribute none.
    """
    if mode not in PAIR_MODES:
        raise PairError(f"build_pairs: unknown mode {mode!r}; choose one of {PAIR_MODES.names()}")
    if source not in PAIR_SOURCES:
        raise PairError(f"build_pairs: unknown source {source!r}; choose one of {PAIR_SOURCES.names()}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise PairError(f"build_pairs: max_pairs must be a positive integer, got {max_pairs!r}")
    if len(items) != len(records):
        raise PairError(
            f"build_pairs: {len(items)} items but {len(records)} detection records; they must be the "
            f"same items in the same order"
        )
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    out: list[dict] = []
    for i, (it, rec) in enumerate(zip(items, records)):
        flat = _flat_answers(i, it, rec)
        options = PAIR_SOURCES.get(source).construct(mode, it.answer, flat, max_pairs, _rng(seed, str(it.id)))
        if not options:
            continue
        counts = Counter(flat)
        prompt = format_question(it.question, it.options, it.domain or domain, instruction)
        for c, a in options:
            out.append(
                {
                    "index": i,
                    "id": it.id,
                    "prompt": prompt,
                    "chosen": answer_text(c),
                    "rejected": answer_text(a),
                    "chosen_option": c,
                    "rejected_option": a,
                    "count": counts[a],
                }
            )
    return out
