"""The chunked probe loop: any detector's queries through any backend, into one record per item.

A detector declares its :class:`Layout` (how many option orders, which demonstration layout) and its
:class:`Need` (letter probabilities — the exact estimator's one forward pass per query — or generated, parsed
answers); the loop asks the backend for exactly that and hands each item's per-query results back to the
detector's ``record``. Items are probed in chunks of ``chunk_size``, each with its own RNG stream and (with a
``work_dir``) saved when finished, so a killed run resumes from its last chunk with the results of an uninterrupted
run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaft.cache import atomic_write_text
from kaft.detection.core import Query, build_queries, letter_token_ids, parse_answer, read_records, to_original
from kaft.items import MCItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """What a detector's queries look like: ``n_orders`` option orders per item behind a ``shots``-shot prompt."""

    n_orders: int
    shots: int
    prompt: str = "kaft"
    order_scheme: str = "random"


@dataclass(frozen=True, kw_only=True)
class Need:
    """What a detector reads from the backend for each query (keyword arguments only: two flags and two numbers
    read ambiguously by position).

    ``letter_probs``: p_T of each option letter as the first answer token at ``temperature`` (no generation), and
    with ``greedy`` also the argmax first token as a one-sample answer. Otherwise ``samples`` responses of
    ``max_new_tokens`` tokens at ``temperature`` (0 = greedy), parsed to option indices."""

    letter_probs: bool
    temperature: float
    samples: int = 1
    max_new_tokens: int = 1
    greedy: bool = False


def _read_letters(backend, queries: Sequence[Query], need: Need) -> list[dict]:
    """Per query ``probs`` (indexed by original option) and, for ``need.greedy``, ``answers`` = [greedy answer]."""
    by_n: dict[int, list[int]] = {}
    for qi, q in enumerate(queries):
        by_n.setdefault(len(q.order), []).append(qi)
    per_query: list[dict] = [{} for _ in queries]
    for n, qis in by_n.items():
        ids = letter_token_ids(backend.tokenizer, n)
        sub = [queries[q].prompt for q in qis]
        probs = backend.letter_probs(sub, ids, need.temperature)
        firsts = backend.greedy_first_tokens(sub) if need.greedy else None
        for j, qi in enumerate(qis):
            per_query[qi]["probs"] = to_original(probs[j], queries[qi].order)
            if firsts is not None:  # greedy: the answer is the argmax token, if it is a letter
                pos = next((p for p, l_ids in enumerate(ids) if firsts[j] in l_ids), -1)
                per_query[qi]["answers"] = [queries[qi].order[pos] if pos >= 0 else -1]
    return per_query


def _read_samples(backend, queries: Sequence[Query], need: Need, chunk_seed: int) -> list[dict]:
    """Per query ``answers``: the original option index each sampled response names (-1 unparsable)."""
    texts = backend.sample([q.prompt for q in queries], need.samples, need.temperature, need.max_new_tokens, chunk_seed)
    return [
        {"answers": [q.order[p] if p >= 0 else -1 for p in (parse_answer(t, len(q.order)) for t in resp)]}
        for q, resp in zip(queries, texts)
    ]


def probe_chunk(
    detector,
    backend,
    items: Sequence[MCItem],
    seed: int,
    domain: str,
    instruction: str | None,
    shot_pool: Sequence[MCItem],
    offset: int,
    chunk_seed: int,
) -> list[dict]:
    """Records of one chunk of items: ``id``, ``gold``, ``orders`` and what ``detector.record`` makes of the
    item's per-query results."""
    lay, need = detector.layout(), detector.need()
    queries = build_queries(
        items, lay.n_orders, lay.shots, seed, domain, instruction, lay.prompt, lay.order_scheme, shot_pool, offset
    )
    if need.letter_probs:
        per_query = _read_letters(backend, queries, need)
    else:
        per_query = _read_samples(backend, queries, need, chunk_seed)
    by_item: list[list[int]] = [[] for _ in items]
    for qi, q in enumerate(queries):
        by_item[q.item].append(qi)
    records = []
    for it, qs in zip(items, by_item):
        rec: dict[str, Any] = {"id": it.id, "gold": it.answer, "orders": [queries[qi].order for qi in qs]}
        rec.update(detector.record(it, [per_query[qi] for qi in qs]))
        records.append(rec)
    return records


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _chunk_seed(seed: int, chunk: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|chunk|{chunk}".encode()).digest()[:4], "big")


def probe(
    detector,
    backend,
    items: Sequence[MCItem],
    seed: int,
    domain: str,
    instruction: str | None = None,
    progress: bool = True,
    work_dir: str | Path | None = None,
) -> list[dict]:
    """Probe every item in chunks; with ``work_dir`` each finished chunk is saved there and reused on restart."""
    from tqdm.auto import tqdm  # lazy: tqdm.auto is slow to import; needed only when a stage computes

    s = detector.settings
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    t0, resumed = time.time(), 0
    bar = tqdm(
        total=len(items), desc=f"detect[{s.name}/{s.estimator}]", unit="item", disable=not progress, mininterval=1.0
    )
    for c, (a, b) in enumerate(_chunks(len(items), s.chunk_size)):
        path = work / f"chunk_{c:05d}.jsonl" if work is not None else None
        if path is not None and path.exists():
            chunk = read_records(path)
            resumed += 1
        else:
            # a detector with queries of its own (generative: free-form prompts) probes its chunk itself
            one = getattr(detector, "probe_chunk", None) or (lambda *args, **kw: probe_chunk(detector, *args, **kw))
            chunk = one(backend, items[a:b], seed, domain, instruction, items, a, chunk_seed=_chunk_seed(seed, c))
            if path is not None:
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in chunk))
        records += chunk
        bar.update(b - a)
    bar.close()
    if resumed:
        log.info("detect: resumed %d finished chunk(s) from %s", resumed, work)
    log.info("detect: %d items (%s, %s estimator) in %.1fs", len(items), s.name, s.estimator, time.time() - t0)
    return records
