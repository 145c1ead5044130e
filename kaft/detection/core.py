"""The probing core every detector shares: queries (option orders, k-shot demonstrations), answer parsing, scoring,
the option letters' token ids, and records I/O.

Option orders (:func:`option_orders`): ``order_scheme: random`` — the original order first, then distinct seeded
random permutations; ``cyclic`` — the n cyclic shifts first (every option visits every position once: a Latin
square), then distinct seeded random ones. Both are seeded by (seed, item id), so an item's queries do not depend
on batching, chunking or the other items; that is what lets a killed run resume chunk by chunk with identical
results.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kaft.errors import KaftError
from kaft.items import MCItem
from kaft.prompts import LETTERS, PROMPTS


class DetectionError(KaftError):
    """An impossible detection config."""


@dataclass(frozen=True)
class Query:
    item: int  # index into the item list
    order: list[int]  # order[j] = original index of the option shown at position j
    prompt: str


ORDER_SCHEMES = ("random", "cyclic")


def seeded_rng(seed: int, *salt: str) -> random.Random:
    """A random stream fixed by (seed, salt…): shared by orders, shots and MC conversion so each is reproducible
    on its own, whatever else ran before."""
    digest = hashlib.sha256("|".join([str(seed), *salt]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def option_orders(n_options: int, n_orders: int, seed: int, item_id: str, scheme: str = "random") -> list[list[int]]:
    """``n_orders`` distinct orders of ``n_options`` options (all of them if fewer exist), deterministic per
    (seed, item id). ``random``: the original first, then seeded permutations; ``cyclic``: the cyclic shifts
    first (each option in each position once), then seeded permutations."""
    if scheme not in ORDER_SCHEMES:
        raise DetectionError(f"detection.order_scheme must be one of {list(ORDER_SCHEMES)}, got {scheme!r}")
    identity = list(range(n_options))
    total = math.factorial(n_options)
    want = min(n_orders, total)
    if scheme == "cyclic":
        orders = [identity[s:] + identity[:s] for s in range(n_options)][:want]
    else:
        orders = [identity]
    seen = {tuple(o) for o in orders}
    rng = seeded_rng(seed, "orders", item_id)
    if total <= 720:  # small: sample without replacement from the full list
        rest = [list(p) for p in itertools.permutations(identity) if p not in seen]
        return orders + rng.sample(rest, want - len(orders))
    while len(orders) < want:
        p = identity[:]
        rng.shuffle(p)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            orders.append(p)
    return orders


def choose_shots(n_items: int, k: int, seed: int) -> list[int]:
    """k+1 candidate demonstration indices; each item uses the first k that are not itself."""
    if k == 0:
        return []
    if n_items < k + 1:
        raise DetectionError(
            f"a {k}-shot prompt needs at least {k + 1} training items, got {n_items}; lower detection.shots"
        )
    return seeded_rng(seed, "shots").sample(range(n_items), k + 1)


def build_queries(
    items: Sequence[MCItem],
    n_orders: int,
    k: int,
    seed: int,
    domain: str,
    instruction: str | None = None,
    prompt: str = "kaft",
    scheme: str = "random",
    shot_pool: Sequence[MCItem] | None = None,
    index_offset: int = 0,
) -> list[Query]:
    """One query per (item, order). Demonstrations come from ``shot_pool`` (default: ``items``); an item never
    demonstrates itself (``index_offset`` = the items' position in the pool when probing a chunk)."""
    pool = items if shot_pool is None else shot_pool
    if prompt not in PROMPTS:
        raise DetectionError(f"detection.prompt must be one of {sorted(PROMPTS)}, got {prompt!r}")
    builder = PROMPTS[prompt]
    candidates = choose_shots(len(pool), k, seed)
    kw = {"instruction": instruction} if instruction and prompt == "kaft" else {}
    queries = []
    for i, it in enumerate(items):
        shot_idx = [j for j in candidates if j != i + index_offset][:k]
        shots = [(pool[j].question, pool[j].options, pool[j].answer) for j in shot_idx]
        for order in option_orders(len(it.options), n_orders, seed, it.id, scheme):
            opts = [it.options[o] for o in order]
            queries.append(Query(i, order, builder(shots, it.question, opts, it.domain or domain, **kw)))
    return queries


_ANSWER_AFTER = re.compile(r"(?:answer is|answer:)\s*\(?([A-Z])\b", re.IGNORECASE)


def parse_answer(text: str, n_options: int) -> int:
    """The option position a response names, or -1: a leading letter ("A", "(B)", "C. ...") or "answer is D"."""
    allowed = LETTERS[:n_options]
    s = text.strip().lstrip("(").lstrip()
    if s and s[0] in allowed and (len(s) == 1 or not s[1].isalnum()):
        return allowed.index(s[0])
    m = _ANSWER_AFTER.search(text)
    if m and m.group(1).upper() in allowed:
        return allowed.index(m.group(1).upper())
    return -1


def score(answers: Sequence[Sequence[int]], gold: int) -> float:
    """KaFT Eq. 1: the fraction of all sampled answers (over orders and samples) equal to the gold answer."""
    flat = [a for per_order in answers for a in per_order]
    return sum(a == gold for a in flat) / len(flat)


def majority(answers: Sequence[Sequence[int]]) -> tuple[int, float]:
    """The most frequent parsable answer and its share of all answers (ties: the lowest option index)."""
    flat = [a for per in answers for a in per]
    counts = Counter(a for a in flat if a >= 0)
    if not counts:
        return -1, 0.0
    best = min(counts, key=lambda a: (-counts[a], a))
    return best, counts[best] / len(flat)


def to_original(per_position: Sequence[float], order: Sequence[int]) -> list[float]:
    """Values indexed by displayed position → indexed by original option (``order[pos]`` = original index)."""
    out = [0.0] * len(order)
    for pos, orig in enumerate(order):
        out[orig] = float(per_position[pos])
    return out


_LETTER_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _letter_table(tokenizer) -> list[list[int]]:
    """Per letter A-Z, the token ids whose decoded text :func:`parse_answer` reads as that letter (cached per
    tokenizer and vocabulary size: one decode pass over the vocabulary)."""
    cached = _LETTER_TABLES.get(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    ids = sorted(tokenizer.get_vocab().values())
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)  # as the sampler decodes
    table: list[list[int]] = [[] for _ in LETTERS]
    for idx, text in zip(ids, texts):
        a = parse_answer(text, len(LETTERS))
        if a >= 0:
            table[a].append(idx)
    _LETTER_TABLES[tokenizer] = (len(tokenizer), table)
    return table


def letter_token_ids(tokenizer, n_options: int) -> list[list[int]]:
    """For each option letter, every vocabulary token that a response starting with it is parsed as (the
    tokenizations whose probabilities the exact estimator sums). Found by decoding, not by spelling: besides "A",
    " A", "ĠA", "▁A", real vocabularies hold SentencePiece's byte token "<0x41>" and byte-level BPE's "(A" and
    tab + "A"."""
    out = [list(ids) for ids in _letter_table(tokenizer)[:n_options]]
    missing = [LETTERS[j] for j, ids in enumerate(out) if not ids]
    if missing:
        raise DetectionError(
            f"the tokenizer has no single token for option letter(s) {missing}; use detection.estimator=sample"
        )
    return [sorted(ids) for ids in out]


_STOP_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def line_stop_ids(tokenizer) -> list[int]:
    """The token ids that end a one-line free-form answer: the end-of-sequence token and every token whose decoded
    text holds a newline (cached per tokenizer and vocabulary size: one decode pass over the vocabulary)."""
    cached = _STOP_TABLES.get(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    ids = sorted(tokenizer.get_vocab().values())
    texts = tokenizer.batch_decode([[i] for i in ids])
    stop = {i for i, t in zip(ids, texts) if "\n" in t}
    if tokenizer.eos_token_id is not None:
        stop.add(int(tokenizer.eos_token_id))
    out = sorted(stop)
    _STOP_TABLES[tokenizer] = (len(tokenizer), out)
    return out


def write_records(records: Sequence[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


#: record fields renamed since records were first cached: old name -> new (a cached artifact keeps its key and is
#: read with the new name). ``pass_at_n`` was never ILP's post-SFT pass@N rate (:mod:`kaft.diagnosis`): it is the
#: base model's "any of the No × Nr answers correct", SMA's BO-N notion.
RENAMED_FIELDS = {"pass_at_n": "any_correct"}


def _renamed(record: dict) -> dict:
    for old, new in RENAMED_FIELDS.items():
        if old in record and new not in record:
            record[new] = record.pop(old)
    return record


def read_records(path: Path) -> list[dict]:
    """The records of a detection artifact (fields of :data:`RENAMED_FIELDS` under their new names)."""
    with open(path, encoding="utf-8") as fh:
        return [_renamed(json.loads(line)) for line in fh if line.strip()]
