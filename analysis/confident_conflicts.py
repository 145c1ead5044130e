"""Confident conflicts on the testbed: the value token of each sentence response, by the kind of fact it states.

EAFT (Diao et al. 2026, §1 and Fig. 1b) finds that SFT data holds a cluster of tokens with *low probability yet low
entropy*: the model is confident in its own prediction but is made to fit a different label ("Confident
Conflicts"), and its gate ``H~_t = H_top-K / ln K`` with K = 20 (Eq. 2-3) damps exactly those tokens. The testbed
knows which facts conflict, so the claim can be measured instead of assumed: for the sentence responses of the
training split (:mod:`kaft.testbed.sentences`) and each kind of fact (``known`` frequent, ``latent`` rare,
``unseen`` never stated, ``contradict`` frequent with another gold value), at the value token(s) of the sentence:

* ``p``     - the pretrained model's probability of the value token (teacher-forced, the prompt training uses);
* ``p_top`` - the probability of the model's own top token there (for a ``contradict`` item: the memorised value);
* ``h``     - the normalised top-20 entropy ``H_top20 / ln 20`` (EAFT Eq. 3 with ln K; kaft's
  :func:`kaft.losses.token.topk_entropy`);
* ``p_first`` / ``h_first`` - the same at the response's first token (right after "Answer:");
* ``w_min`` / ``w_max`` - EAFT's token weights (:func:`kaft.losses.token.eaft_token_weights`, the defaults
  ``loss=eaft`` trains with) over all tokens of one response: the gate differs within a response when they differ.

Each kind gets its mean and a Student-t 95 % interval over items (:func:`analysis.stats.t_interval`). The claim is
``contradict``'s p far below ``known``'s (intervals apart) *and* its h far below ``unseen``'s: a confident conflict
rather than mere ignorance. Beside it, the share of each kind's value tokens that EAFT's pilot (Fig. 2a) would mask:
the bottom 15 % in both probability and entropy of all response tokens. What the testbed shows is printed either
way.

    python -m analysis.confident_conflicts [--seed 0] [--split train] [--response sentence] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from analysis.stats import t_interval

KINDS = ("known", "latent", "unseen", "contradict")
METRICS = ("p", "p_top", "h", "w_value", "w_min", "w_max", "p_first", "h_first")
TOP_K = 20


def value_positions(tok, target: str, value: str, start: int) -> list[int]:
    """Positions (in the full sequence, whose target ids begin at ``start``) of the tokens that overlap the first
    occurrence of ``value`` in ``target``."""
    enc = tok(target, add_special_tokens=False, return_offsets_mapping=True)
    lo = target.index(value)
    hi = lo + len(value)
    return [start + i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < hi and b > lo]


def item_stats(model, tok, item, domain: str = "general", top_k: int = TOP_K) -> dict:
    """One free-form item's value-token probability and entropy and its response's EAFT weights (no gradient)."""
    import torch

    from kaft import targets
    from kaft.losses.token import eaft_token_weights, topk_entropy
    from kaft.train.examples import special_prefix

    prompt, target = targets.prompt(item, domain), " " + item.target
    p_ids = special_prefix(tok) + list(tok(prompt, add_special_tokens=False)["input_ids"])
    t_ids = list(tok(target, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([p_ids + t_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    pred = logits[len(p_ids) - 1 : -1]  # row j predicts target token j
    dist = torch.softmax(pred, dim=-1)
    probs, top = dist.gather(1, torch.tensor(t_ids)[:, None])[:, 0], dist.max(dim=-1).values
    h = topk_entropy(pred, top_k) / math.log(top_k)
    w = eaft_token_weights(pred, k=top_k)
    at = [j - len(p_ids) for j in value_positions(tok, target, item.answer, len(p_ids))]
    return {
        "id": item.id,
        "kind": (item.meta or {}).get("kind"),
        "n_tokens": len(t_ids),
        "p": statistics.fmean(float(probs[j]) for j in at),
        "p_top": statistics.fmean(float(top[j]) for j in at),
        "h": statistics.fmean(float(h[j]) for j in at),
        "w_value": statistics.fmean(float(w[j]) for j in at),
        "p_first": float(probs[0]),
        "h_first": float(h[0]),
        "w_min": float(w.min()),
        "w_max": float(w.max()),
        "token_p": [float(x) for x in probs],
        "token_h": [float(x) for x in h],
        "value_at": at,
    }


def summarise(rows: Sequence[Mapping]) -> dict:
    """Per kind: ``n``, and per metric its mean and 95 % interval ``[low, high]`` (None with one item)."""
    out = {}
    for kind in [k for k in KINDS if any(r["kind"] == k for r in rows)]:
        mine = [r for r in rows if r["kind"] == kind]
        entry: dict = {"n": len(mine)}
        for m in METRICS:
            iv = t_interval([r[m] for r in mine])
            entry[m] = {"mean": iv.mean, "low": iv.low, "high": iv.high}
        entry["w_range_mean"] = statistics.fmean(r["w_max"] - r["w_min"] for r in mine)
        entry["n_tokens_mean"] = statistics.fmean(r["n_tokens"] for r in mine)
        out[kind] = entry
    return out


def _below(summary: Mapping, kind: str, other: str, metric: str) -> bool | None:
    """Whether ``kind``'s interval of ``metric`` lies wholly below ``other``'s (None when either is missing)."""
    a, b = summary.get(kind, {}).get(metric), summary.get(other, {}).get(metric)
    if not a or not b or a["high"] is None or b["low"] is None:
        return None
    return a["high"] < b["low"]


def verdict(summary: Mapping, rows: Sequence[Mapping], spread: float = 0.01) -> dict:
    """The claims: contradict's p below known's and its h below unseen's (intervals apart), and the share of
    responses whose EAFT weights differ within the response by more than ``spread``."""
    p_below = _below(summary, "contradict", "known", "p")
    h_below = _below(summary, "contradict", "unseen", "h")
    return {
        "p_contradict_below_known": p_below,
        "h_contradict_below_unseen": h_below,
        "confident_conflict": None if None in (p_below, h_below) else bool(p_below and h_below),
        "weights_vary_within_response": statistics.fmean(float(r["w_max"] - r["w_min"] > spread) for r in rows),
    }


def bottom_share(rows: Sequence[Mapping], q: float = 0.15) -> dict:
    """EAFT Fig. 2a's masked region: the response tokens in the bottom ``q`` of *both* probability and entropy (the
    quantiles taken over every response token of ``rows``): the cuts, the region's size, the share of it that is a
    response's first token, and per kind the share of its value tokens inside it."""
    import numpy as np

    p_cut = float(np.quantile([x for r in rows for x in r["token_p"]], q))
    h_cut = float(np.quantile([x for r in rows for x in r["token_h"]], q))
    region = [
        (r, j) for r in rows for j in range(r["n_tokens"]) if r["token_p"][j] <= p_cut and r["token_h"][j] <= h_cut
    ]
    out: dict = {
        "q": q,
        "p_cut": p_cut,
        "h_cut": h_cut,
        "n_region": len(region),
        "first_token_share": statistics.fmean(float(j == 0) for _, j in region) if region else None,
    }
    for kind in [k for k in KINDS if any(r["kind"] == k for r in rows)]:
        hits = [
            all(r["token_p"][j] <= p_cut and r["token_h"][j] <= h_cut for j in r["value_at"])
            for r in rows
            if r["kind"] == kind
        ]
        out[kind] = statistics.fmean(float(x) for x in hits)
    return out


def measure(model, tok, items: Sequence, domain: str = "general", top_k: int = TOP_K) -> dict:
    """``{"rows": per item, "by_kind": summarise(rows), "claims": verdict(...), "bottom15": bottom_share(rows)}``
    over the items with a kind."""
    rows = [item_stats(model, tok, it, it.domain or domain, top_k) for it in items if (it.meta or {}).get("kind")]
    by_kind = summarise(rows)
    return {"rows": rows, "by_kind": by_kind, "claims": verdict(by_kind, rows), "bottom15": bottom_share(rows)}


def table(result: Mapping) -> str:
    """The per-kind table (mean [95 % interval]) and the claims, as printed."""

    def cell(e):
        return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" if e["low"] is not None else f"{e['mean']:.3f}"

    cols = ("p(value)", "p(top token)", "H_top20/ln20", "EAFT w(value)")
    head = f"{'kind':<11} {'n':>4}  " + " ".join(f"{c:<22}" for c in cols) + " w range"
    lines = [head, "-" * len(head)]
    for kind, e in result["by_kind"].items():
        cells = " ".join(f"{cell(e[m]):<22}" for m in ("p", "p_top", "h", "w_value"))
        lines.append(f"{kind:<11} {e['n']:>4}  {cells} {e['w_range_mean']:.3f}")
    c, b = result["claims"], result["bottom15"]
    shares = ", ".join(f"{k} {b[k]:.2f}" for k in result["by_kind"])
    lines += [
        "",
        f"p(contradict) below p(known), intervals apart:   {c['p_contradict_below_known']}",
        f"h(contradict) below h(unseen), intervals apart:  {c['h_contradict_below_unseen']}",
        f"confident conflict (both):                       {c['confident_conflict']}",
        f"responses whose EAFT weights differ (> 0.01):    {c['weights_vary_within_response']:.3f}",
        f"value tokens in the bottom 15 % of both p and H (EAFT Fig. 2a, over all response tokens): {shares}",
        f"  that region: {b['n_region']} tokens, {b['first_token_share'] or 0:.2f} of them a response's first token",
        "first response token, by kind (p, H): "
        + ", ".join(f"{k} {e['p_first']['mean']:.2g} {e['h_first']['mean']:.2g}" for k, e in result["by_kind"].items()),
    ]
    return "\n".join(lines)


def load(seed: int, cache_dir: str, split: str, response: str):
    """The testbed model of ``seed`` (the cached default; built on first use, about a minute), its tokenizer and
    the split's free-form items with ``response`` sentences."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import kaft.testbed.plugin  # noqa: F401  registers the testbed data source
    from kaft.detection.convert import load_freeform
    from kaft.testbed.model import build_model

    cfg = {"seed": seed}
    path = build_model(cfg, str(Path(cache_dir).expanduser()), progress=False)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    spec = {"source": "testbed", "split": split, "format": "freeform", "response": response}
    return model, tok, load_freeform(spec, config={"testbed": cfg})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.confident_conflicts", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="the testbed seed (world and pretrained model)")
    ap.add_argument("--cache-dir", default="~/.cache/kaft", help="where the testbed model is cached")
    ap.add_argument("--split", default="train", help="train holds all four kinds")
    ap.add_argument("--response", default="sentence", choices=("sentence", "sentence+evidence", "answer"))
    ap.add_argument("--json", dest="json_out", help="also write the result (rows included) to this JSON file")
    args = ap.parse_args(argv)
    model, tok, items = load(args.seed, args.cache_dir, args.split, args.response)
    result = measure(model, tok, items)
    print(table(result))
    if args.json_out:
        meta = {k: getattr(args, k) for k in ("seed", "split", "response")}
        Path(args.json_out).write_text(json.dumps({**meta, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
