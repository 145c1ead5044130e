"""Stage 2 — detect: score how much each training item conflicts with what the model already knows.

The *diversified* strategy of the KaFT paper (§2.2, Eq. 1): each item is asked in ``num_orders`` option orders,
each order ``num_samples`` times at temperature 0.7, behind a k-shot prompt of other training items (App. A.3);
Score_i = fraction of sampled answers equal to the gold answer (higher = fewer conflicts).

Option orders: the original order first, then distinct random permutations drawn from a generator seeded by
(seed, item id), so an item's orders do not depend on which other items are in the batch.
Sampling reuses one prompt prefill for all ``num_samples`` responses (the KV cache is repeated), so the cost
is one forward pass over each prompt plus ``max_new_tokens`` decoding steps per sample.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kaft.data import MCItem
from kaft.prompts import LETTERS, few_shot_prompt

log = logging.getLogger(__name__)


class DetectionError(ValueError):
    """An impossible detection config."""


@dataclass(frozen=True)
class Query:
    item: int          # index into the item list
    order: list[int]   # order[j] = original index of the option shown at position j
    prompt: str


# ------------------------------------------------------------------------------------------ pure helpers
def _rng(seed: int, *salt: str) -> random.Random:
    digest = hashlib.sha256("|".join([str(seed), *salt]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def option_orders(n_options: int, n_orders: int, seed: int, item_id: str) -> list[list[int]]:
    """``n_orders`` distinct orders of ``n_options`` options: the original first, then seeded random ones.

    If fewer distinct orders exist (n! < n_orders), all of them are returned.
    """
    identity = list(range(n_options))
    total = math.factorial(n_options)
    want = min(n_orders, total)
    orders, seen = [identity], {tuple(identity)}
    rng = _rng(seed, "orders", item_id)
    if total <= 720:  # small: sample without replacement from the full list
        rest = [list(p) for p in itertools.permutations(identity) if p != tuple(identity)]
        orders += rng.sample(rest, want - 1)
        return orders
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
        raise DetectionError(f"a {k}-shot prompt needs at least {k + 1} training items, got {n_items}; "
                             f"lower detection.shots")
    return _rng(seed, "shots").sample(range(n_items), k + 1)


def build_queries(items: Sequence[MCItem], n_orders: int, k: int, seed: int, domain: str,
                  instruction: str | None = None) -> list[Query]:
    candidates = choose_shots(len(items), k, seed)
    kw = {"instruction": instruction} if instruction else {}
    queries = []
    for i, it in enumerate(items):
        shot_idx = [j for j in candidates if j != i][:k]
        shots = [(items[j].question, items[j].options, items[j].answer) for j in shot_idx]
        for order in option_orders(len(it.options), n_orders, seed, it.id):
            opts = [it.options[o] for o in order]
            prompt = few_shot_prompt(shots, it.question, opts, it.domain or domain, **kw)
            queries.append(Query(i, order, prompt))
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


# ------------------------------------------------------------------------------------------ sampling
def _sample_batch(model, tokenizer, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int,
                  generator) -> list[list[str]]:
    """``n`` sampled continuations per prompt, decoding from one shared prefill per prompt."""
    import torch

    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=max_new_tokens > 1)
    logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
    cache = out.past_key_values if max_new_tokens > 1 else None
    if cache is not None:
        cache.batch_repeat_interleave(n)
    mask = mask.repeat_interleave(n, dim=0)
    last_pos = pos[:, -1].repeat_interleave(n, dim=0)
    generated = []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits / temperature, dim=-1)
        tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        generated.append(tok)
        if step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=tok, attention_mask=mask, position_ids=last_pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
    gen = torch.cat(generated, dim=1).cpu()
    texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def sample_answers(model, tokenizer, queries: Sequence[Query], items: Sequence[MCItem], n: int,
                   temperature: float, max_new_tokens: int, batch_size: int, seed: int,
                   progress: bool = True) -> list[list[list[int]]]:
    """answers[i][j][s]: original option index named by sample s of item i's j-th order (-1 unparsable)."""
    import torch
    from tqdm.auto import tqdm

    answers: list[list[list[int]]] = [[] for _ in items]
    # longest first: similar lengths share a batch, and a memory problem shows up in the first batch
    order = sorted(range(len(queries)), key=lambda q: -len(queries[q].prompt))
    gen = torch.Generator().manual_seed(seed)
    results: dict[int, list[int]] = {}
    bar = tqdm(total=len(items), desc="detect", unit="item", disable=not progress, mininterval=1.0)
    per_item_total = [0] * len(items)
    for q in queries:
        per_item_total[q.item] += 1
    per_item_done = [0] * len(items)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [queries[q] for q in order[start:start + batch_size]]
            texts = _sample_batch(model, tokenizer, [q.prompt for q in batch], n, temperature, max_new_tokens, gen)
            for qi, q, resp in zip(order[start:start + batch_size], batch, texts):
                positions = [parse_answer(t, len(q.order)) for t in resp]
                results[qi] = [q.order[p] if p >= 0 else -1 for p in positions]
                per_item_done[q.item] += 1
                if per_item_done[q.item] == per_item_total[q.item]:
                    bar.update(1)
    bar.close()
    for qi, q in enumerate(queries):
        answers[q.item].append(results[qi])
    return answers


# ------------------------------------------------------------------------------------------ stage
def validate(cfg: Mapping) -> None:
    for key in ("num_orders", "num_samples", "max_new_tokens", "batch_size"):
        if int(cfg[key]) < 1:
            raise DetectionError(f"detection.{key} must be ≥ 1, got {cfg[key]}")
    if int(cfg["shots"]) < 0:
        raise DetectionError(f"detection.shots must be ≥ 0, got {cfg['shots']}")
    if not float(cfg["temperature"]) > 0:
        raise DetectionError(f"detection.temperature must be > 0 for sampling, got {cfg['temperature']}")


def diversified(model, tokenizer, items: Sequence[MCItem], cfg: Mapping, seed: int, domain: str,
                instruction: str | None = None, progress: bool = True) -> list[dict]:
    """Per-item records: id, score, gold, orders and sampled answers (reused later by self-align and DPO)."""
    validate(cfg)
    queries = build_queries(items, int(cfg["num_orders"]), int(cfg["shots"]), seed, domain, instruction)
    t0 = time.time()
    answers = sample_answers(model, tokenizer, queries, items, int(cfg["num_samples"]), float(cfg["temperature"]),
                             int(cfg["max_new_tokens"]), int(cfg["batch_size"]), seed, progress)
    log.info("detect: %d items × %d orders × %d samples in %.1fs", len(items), int(cfg["num_orders"]),
             int(cfg["num_samples"]), time.time() - t0)
    orders_by_item: list[list[list[int]]] = [[] for _ in items]
    for q in queries:
        orders_by_item[q.item].append(q.order)
    return [{"id": it.id, "score": score(answers[i], it.answer), "gold": it.answer,
             "orders": orders_by_item[i], "answers": answers[i]} for i, it in enumerate(items)]


STRATEGIES: dict[str, Callable[..., list[dict]]] = {"diversified": diversified}


def run_detection(model, tokenizer, items, cfg: Mapping, seed: int, domain: str, instruction=None,
                  progress: bool = True) -> list[dict]:
    name = cfg.get("name", "diversified")
    if name not in STRATEGIES:
        raise DetectionError(f"unknown detection strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](model, tokenizer, items, cfg, seed, domain, instruction, progress)


def write_records(records: Sequence[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def read_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
