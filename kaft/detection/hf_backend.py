"""The ``hf`` probing backend: a transformers model in this process.

Probing is thousands of short prompts that differ only after their shared k-shot demonstrations, and each needs
one next-token distribution or a few sampled tokens. So prompts are batched by shared demonstrations, left-padded,
and (``share_prefix``) the demonstrations are encoded once per batch and reused through the KV cache; sampling
decodes ``n`` continuations from one prefill per prompt instead of calling ``generate`` ``n`` times.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from kaft.detection.backends import BACKENDS
from kaft.detection.core import line_stop_ids


@BACKENDS.register("hf")
class HFBackend:
    """Probing on an in-memory transformers model: batched forward passes, left padding, and (``share_prefix``)
    the demonstrations every query of a batch shares encoded once per batch and reused through the KV cache."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, share_prefix: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.share_prefix = int(batch_size), bool(share_prefix)
        self.tokenizer.padding_side = "left"

    @classmethod
    def from_settings(cls, s: Mapping, model_loader, model_path=None, seed: int = 0) -> HFBackend:
        model, tok = model_loader()
        return cls(model, tok, int(s["batch_size"]), bool(s["share_prefix"]))

    @property
    def device(self):
        return next(self.model.parameters()).device

    # -- next-token logits
    def _encode(self, texts: Sequence[str], add_special: bool):
        return self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special)

    def _plain_last_logits(self, prompts: Sequence[str]):
        enc = self._encode(prompts, True)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw)
        return out.logits[:, -1, :].float()

    def _split(self, prompt: str) -> tuple[str, str] | None:
        cut = prompt.rfind("\n\n")
        return (prompt[: cut + 2], prompt[cut + 2 :]) if cut > 0 else None

    def _suffix_ids(self, prefix: str, prompts: Sequence[str]) -> list[list[int]] | None:
        """Each prompt's tokens after ``prefix``'s, cut from the whole prompt's tokens (a suffix tokenized alone may
        differ: SentencePiece starts it with a "▁" it lacks after a blank line); None unless every prompt's tokens
        start with the prefix's, i.e. unless sharing is exact."""
        p = self.tokenizer(prefix)["input_ids"]
        wholes = self.tokenizer(list(prompts))["input_ids"]
        if any(len(w) <= len(p) or w[: len(p)] != p for w in wholes):
            return None
        return [w[len(p) :] for w in wholes]

    def _prefix_ok(self, prefix: str, suffix: str) -> bool:
        return self._suffix_ids(prefix, [prefix + suffix]) is not None

    def _shared_last_logits(self, prefix: str, suffix_ids: Sequence[Sequence[int]]):
        import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

        pre = self.tokenizer(prefix, return_tensors="pt")
        p_ids, p_mask = pre["input_ids"].to(self.device), pre["attention_mask"].to(self.device)
        out = self.model(input_ids=p_ids, attention_mask=p_mask, use_cache=True)
        cache = out.cache  # transformers 5 names the KV cache `cache` (`past_key_values` is deprecated)
        n, width = len(suffix_ids), max(len(x) for x in suffix_ids)
        cache.batch_repeat_interleave(n)
        pad = self.tokenizer.pad_token_id or 0  # left padding, masked out
        s_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in suffix_ids], device=self.device)
        s_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in suffix_ids], device=self.device)
        plen = p_ids.shape[1]
        mask = torch.cat([p_mask.expand(n, -1), s_mask], dim=1)
        pos = (plen + s_mask.cumsum(-1) - 1).clamp(min=plen)
        kw = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        out = self.model(input_ids=s_ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, **kw)
        return out.logits[:, -1, :].float()

    def last_logits(self, prompts: Sequence[str]):
        """Next-token logits ``[len(prompts), V]`` (float32) for a batch of prompts."""
        import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

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
                part = idx[s : s + self.batch_size]
                yield part, [prompts[i] for i in part]

    # -- the backend interface (kaft.detection.backends)
    def letter_probs(
        self, prompts: Sequence[str], letter_ids: Sequence[Sequence[int]], temperature: float
    ) -> list[list[float]]:
        """p_T(next token ∈ letter_ids[j]) under softmax(logits / T) over the full vocabulary, per prompt."""
        import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

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

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        top_k: int = 0,
        top_p: float = 1.0,
        stop_at_line: bool = False,
    ) -> list[list[str]]:
        """``n`` continuations per prompt (temperature 0 = greedy), one prefill per prompt shared by its samples;
        ``top_k`` > 0 / ``top_p`` < 1 restrict each draw as HF ``generate`` does (SMA's sampling). ``stop_at_line``
        (free-form answers): each continuation ends before its first end-of-sequence or newline token, and a batch
        stops decoding once every continuation has ended."""
        import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

        gen = torch.Generator().manual_seed(int(seed))
        stop = line_stop_ids(self.tokenizer) if stop_at_line else None
        out: list[list[str]] = [[] for _ in prompts]
        with torch.inference_mode():
            for idx, batch in self._batches(prompts):
                for i, texts in zip(
                    idx,
                    _sample_batch(
                        self.model, self.tokenizer, batch, n, temperature, max_new_tokens, gen, top_k, top_p, stop
                    ),
                ):
                    out[i] = texts
        return out


def _accepts(model, arg: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return arg in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """HF's top-k then top-p (nucleus) warpers on ``[N, V]`` logits already divided by the temperature: tokens
    outside the k largest, then outside the smallest set whose probability reaches ``top_p`` (the most likely token
    always stays), get -inf. ``top_k=0, top_p=1`` returns the logits untouched."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def _sample_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    generator,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] | None = None,
) -> list[list[str]]:
    """``n`` sampled continuations per prompt, decoding from one shared prefill per prompt (temperature 0: greedy);
    with ``stop_ids`` each ends before its first stop token and decoding ends when all have stopped."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}  # not [B, T, V]: V is 32k-152k
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=max_new_tokens > 1, **kw)
    logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
    cache = out.cache if max_new_tokens > 1 else None
    if cache is not None:
        cache.batch_repeat_interleave(n)
    mask = mask.repeat_interleave(n, dim=0)
    last_pos = pos[:, -1].repeat_interleave(n, dim=0)
    generated = []
    stop = torch.tensor(list(stop_ids), device=device) if stop_ids else None
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        else:
            tok = logits.argmax(-1, keepdim=True)
        generated.append(tok)
        if stop is not None:
            done |= torch.isin(tok[:, 0], stop)
        if step == max_new_tokens - 1 or (stop is not None and bool(done.all())):
            break
        mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=tok, attention_mask=mask, position_ids=last_pos[:, None], cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1, :].float()
    gen = torch.cat(generated, dim=1).cpu().tolist()
    if stop is not None:
        gen = [_until(row, set(stop_ids)) for row in gen]
    texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def _until(row: list[int], stop: set[int]) -> list[int]:
    """``row`` up to (without) its first token in ``stop``."""
    return next((row[:i] for i, t in enumerate(row) if t in stop), row)
