"""Preference pairs for DPO from the detection stage's sampled answers.

Why from detection: conflict detection already asked the model each training question No × Nr times; the answers
it gave that are wrong are exactly what fine-tuning should move it away from, so they are the rejected responses at
no extra generation cost (the self-alignment / SMA recipe). One pair per *distinct* wrong option the model named —
not per wrong sample: for multiple choice, repeated samples of the same wrong letter would be identical pairs, so
they are merged; the option named most often comes first (ties broken by a seeded draw per item), and at most
``max_pairs`` are kept per item. Unparsable answers (-1) name no option and make no pair.

Chosen response (``mode``, registry :data:`CHOSEN`):

* ``dataset_self`` — the reference answer (gold) of the data set, for every item the model got wrong at least once.
* ``self_self`` — a correct answer the model sampled itself (the SMA paper's best setting). For multiple choice the
  only correct self-answer *is* the gold letter, so the pairs are the same as ``dataset_self`` except that items
  the model never answered correctly (no correct sample) contribute none.

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


def _rng(seed: int, item_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|pairs|{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def has_samples(records: Sequence[Mapping] | None) -> bool:
    """Whether any detection record carries sampled answers."""
    return bool(records) and any(r.get("answers") for r in records)


def build_pairs(items: Sequence[MCItem], records: Sequence[Mapping], mode: str, max_pairs: int, seed: int,
                domain: str = "general", instruction: str | None = None) -> list[dict]:
    """DPO pairs, in item order, at most ``max_pairs`` per item (see the module docstring for the choices).

    ``records[i]`` is item i's detection record (``id``, ``gold``, ``answers[j][s]`` = original option index named by
    sample s under order j, -1 unparsable). Each pair is ``{"index": i, "id", "prompt", "chosen", "rejected",
    "chosen_option", "rejected_option", "count"}`` with ``count`` = how many samples named the rejected option.
    Deterministic in ``seed`` (which only breaks ties between equally frequent wrong options) and independent of
    the other items. Items without samples or without a wrong sample contribute none.
    """
    if mode not in CHOSEN:
        raise ValueError(f"build_pairs: unknown mode {mode!r}; choose one of {sorted(CHOSEN)}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"build_pairs: max_pairs must be a positive integer, got {max_pairs!r}")
    if len(items) != len(records):
        raise ValueError(f"build_pairs: {len(items)} items but {len(records)} detection records; they must be the "
                         f"same items in the same order")
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    out: list[dict] = []
    for i, (it, rec) in enumerate(zip(items, records)):
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
        counts = Counter(a for a in flat if a >= 0)
        chosen = CHOSEN[mode](it.answer, counts)
        wrong = sorted(a for a in counts if a != it.answer)
        if chosen is None or not wrong:
            continue
        rng = _rng(seed, str(it.id))
        tie = {a: rng.random() for a in wrong}
        wrong.sort(key=lambda a: (-counts[a], tie[a]))
        prompt = format_question(it.question, it.options, it.domain or domain, instruction)
        for a in wrong[:max_pairs]:
            out.append({"index": i, "id": it.id, "prompt": prompt, "chosen": answer_text(chosen),
                        "rejected": answer_text(a), "chosen_option": chosen, "rejected_option": a,
                        "count": counts[a]})
    return out
