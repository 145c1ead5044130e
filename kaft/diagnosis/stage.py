"""The diagnosis stage: after SFT, the tuned model re-answers its own training set (ILP §3.1.2–3.1.3), and the base
model's zero-shot and ICL answer distributions give K(x), JS, high-confidence errors and Ren's Exp-IV signals.

Three forward passes per training item, no generation: the tuned model's and the base model's zero-shot letter
distributions (the training prompt, kaft's App. A.3 layout without demonstrations: what SFT taught) and the base
model's ICL distribution (Ren et al.'s layout, ``icl_shots`` demonstrations of other training items). The N runs are
N independent answers drawn from the tuned model's answer-token distribution at ``temperature`` (the mass on no
option letter is a run that names no option: wrong) -- exactly what N sampled first tokens would give, without
their noise in the forward pass. A run's confidence is the tuned model's probability (T = 1) of its answer token.
The base model is the tuned one with its LoRA adapter disabled (peft's ``disable_adapter``): the adapter wraps the
base model in place.

Cached (stage ``diagnose``) per adapter (the train key), model, items, settings, seed and prompt settings: a re-run
recomputes nothing. Value: the per-item rows (:func:`item_row`); :func:`summarize` makes results.json's block.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from kaft import data as data_mod
from kaft.cache import make_key
from kaft.detection.core import build_queries, letter_token_ids, read_records, seeded_rng, write_records
from kaft.diagnosis import settings as settings_mod
from kaft.diagnosis import signals as sig
from kaft.items import MCItem
from kaft.stages import StageResult

log = logging.getLogger("kaft")

VERSION = 1  # bumped when the stage's artifact changes
ROUND = 6  # decimals of the distributions kept in the rows


def letter_dists(backend, prompts: Sequence[str], items: Sequence[MCItem], temperature: float) -> list[list[float]]:
    """Per prompt, p_T(next token is option letter j) over the full vocabulary (items grouped by option count)."""
    out: list[list[float]] = [[] for _ in prompts]
    by_n: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_n.setdefault(len(it.options), []).append(i)
    for n, idx in by_n.items():
        ids = letter_token_ids(backend.tokenizer, n)
        for i, p in zip(idx, backend.letter_probs([prompts[i] for i in idx], ids, temperature)):
            out[i] = [float(x) for x in p]
    return out


def prompts(items: Sequence[MCItem], shots: int, layout: str, seed: int, domain: str, instruction) -> list[str]:
    """One prompt per item in its original option order: ``kaft`` zero-shot (the training prompt) or ``ren`` ICL."""
    queries = build_queries(items, 1, shots, seed, domain, instruction if layout == "kaft" else None, prompt=layout)
    return [q.prompt for q in queries]


def probe(model, tokenizer, items: Sequence[MCItem], s, seed: int, domain: str, instruction) -> dict[str, list]:
    """The four distributions per item: tuned zero-shot at T = 1 and at ``temperature``, base zero-shot, base ICL."""
    from kaft.detection.hf_backend import HFBackend  # lazy: a cached diagnosis never needs torch

    if not hasattr(model, "disable_adapter"):
        raise TypeError("the diagnosis needs the tuned peft model (its adapter disabled is the base model)")
    zero = prompts(items, 0, "kaft", seed, domain, instruction)
    icl = prompts(items, s.icl_shots, "ren", seed, domain, instruction)
    # zero-shot prompts share no demonstrations: batched without prefix grouping (as SMA's sampling is)
    plain = HFBackend(model, tokenizer, s.batch_size, share_prefix=False)
    shared = HFBackend(model, tokenizer, s.batch_size, share_prefix=True)
    out = {"sft": letter_dists(plain, zero, items, 1.0)}
    out["sft_t"] = out["sft"] if s.temperature == 1.0 else letter_dists(plain, zero, items, s.temperature)
    with model.disable_adapter():
        out["base"] = letter_dists(plain, zero, items, 1.0)
        out["icl"] = letter_dists(shared, icl, items, 1.0)
    return out


def item_row(index: int, item: MCItem, dists: dict[str, list[float]], s, seed: int) -> dict:
    """One training item's signals (the per-item row of results.json's ``diagnosis.items``)."""
    gold, p_sft, p_base, p_icl = item.answer, dists["sft"], dists["base"], dists["icl"]
    runs = sig.sample_runs(dists["sft_t"], s.n_runs, seeded_rng(seed, "diagnosis", item.id))
    conf = [p_sft[a] if a >= 0 else 0.0 for a in runs]
    rate, bon = sig.pass_rate(runs, gold), sig.best_of_n(runs, conf)
    base_pred = sig.argmax(p_base)
    return {
        "index": index,
        "id": item.id,
        "kind": item.meta.get("kind"),
        "gold": gold,
        "pass_rate": rate,
        "runs": runs,
        "bon_pred": bon,
        "bon_correct": bon == gold,
        "unlearned": sig.unlearned(rate, s.tau),
        "train_pred": sig.argmax(p_sft),
        "train_correct": sig.argmax(p_sft) == gold,
        "base_pred": base_pred,
        "base_conf": p_base[base_pred],
        "base_correct": sig.knows(base_pred, gold),
        "base_high_conf_error": sig.high_conf_error(base_pred, p_base[base_pred], gold, s.tau_c),
        "js": sig.js_divergence(p_base, p_sft),
        "ren_consistency": sig.rank_consistency(p_icl, p_sft),
        "ren_kl": sig.kl_divergence(p_sft, p_icl),
        **{f"p_{k}": [round(x, ROUND) for x in dists[k]] for k in ("sft", "base", "icl")},
    }


def diagnosis_items(items: Sequence, records: Sequence[dict]) -> list[MCItem] | None:
    """The training items as multiple choice: themselves, or (free-form training after MC conversion, ILP §3.1.1)
    each one's converted item from its detection record; None when some item has no multiple-choice version."""
    if all(isinstance(it, MCItem) for it in items):
        return list(items)
    converted = {r["id"]: r["item"] for r in records if "item" in r}
    if not all(it.id in converted for it in items):
        return None
    return [MCItem.from_dict(converted[it.id]) for it in items]


def diagnose_key(ctx, items: Sequence[MCItem], train_key: str, s) -> str:
    return make_key(
        "diagnose",
        VERSION,
        train_key,
        ctx.model_id,
        data_mod.fingerprint(items),
        settings_mod.key_settings(s),
        ctx.seed,
        ctx.domain,
        ctx.instruction,
    )


def stage_diagnose(ctx, items: Sequence[MCItem], train_key: str, get_tuned: Callable[[], tuple]):
    """The per-item rows for ``items`` (the training set as trained), the tuned model ``get_tuned()`` (called only
    on a cache miss) against its base. Value: a list of :func:`item_row` dicts, in the items' order."""
    s = settings_mod.parse(ctx.plain("diagnosis"))
    key = diagnose_key(ctx, items, train_key, s)

    def build(tmp: Path):
        model, tok = get_tuned()
        dists = probe(model, tok, items, s, ctx.seed, ctx.domain, ctx.instruction)
        rows = [item_row(i, it, {k: v[i] for k, v in dists.items()}, s, ctx.seed) for i, it in enumerate(items)]
        write_records(rows, tmp / "items.jsonl")

    hit = ctx.cache.get_or_create("diagnose", key, build, meta={"n_items": len(items)})
    log.info("diagnosis %s (%s)", "reused from cache" if hit.cached else "computed", hit.path)
    return StageResult(read_records(hit.path / "items.jsonl"), hit.cached, key)


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def by_kind(rows: Sequence[dict]) -> dict[str, dict]:
    """Per item kind (the testbed's known / latent / unseen / contradict): its items, unlearned ones, the share of
    its items that are unlearned, and its share of the unlearned set."""
    total = sum(r["unlearned"] for r in rows)
    out = {}
    for kind in sorted({r["kind"] for r in rows if r.get("kind") is not None}):
        of = [r for r in rows if r.get("kind") == kind]
        n_un = sum(r["unlearned"] for r in of)
        out[kind] = {"n": len(of), "unlearned": n_un, "rate": n_un / len(of), "share": n_un / total if total else 0.0}
    return out


def summarize(rows: Sequence[dict], s) -> dict:
    """results.json's ``diagnosis`` block (without ``items``): rates over the rows and the settings behind them."""
    kinds = by_kind(rows)
    return {
        "n_items": len(rows),
        "unlearned": sum(r["unlearned"] for r in rows),
        "unlearned_rate": _mean(r["unlearned"] for r in rows),
        "unlearned_by_kind": {k: v["rate"] for k, v in kinds.items()},
        "unlearned_share_by_kind": {k: v["share"] for k, v in kinds.items()},
        "kinds": kinds,
        "train_accuracy": _mean(r["train_correct"] for r in rows),
        "bon_accuracy": _mean(r["bon_correct"] for r in rows),
        "pass_rate_mean": _mean(r["pass_rate"] for r in rows),
        "base_accuracy": _mean(r["base_correct"] for r in rows),
        "base_high_conf_error_rate": _mean(r["base_high_conf_error"] for r in rows),
        "js_mean": _mean(r["js"] for r in rows),
        "ren": {
            "consistency_mean": _mean(r["ren_consistency"] for r in rows),
            "kl_mean": _mean(r["ren_kl"] for r in rows),
        },
        "settings": dataclasses.asdict(s),
    }


def headline(block: dict | None) -> str | None:
    """The printed summary line: the unlearned rate and the rate by kind."""
    if not block:
        return None
    if block.get("skipped"):
        return f"diagnosis skipped: {block['skipped']}"
    kinds = "  ".join(f"{k} {v['rate']:.2f} ({v['unlearned']}/{v['n']})" for k, v in block["kinds"].items())
    ren = block["ren"]
    return (
        f"diagnosis: unlearned {block['unlearned_rate']:.3f} ({block['unlearned']}/{block['n_items']})"
        + (f"  by kind: {kinds}" if kinds else "")
        + f"  train acc {block['train_accuracy']:.3f}  Ren consistency {_fmt(ren['consistency_mean'])}"
        + f" KL {_fmt(ren['kl_mean'])}"
        + _causes_text(block.get("causes"))
    )


def _causes_text(block: dict | None) -> str:
    """The causes' counts, and on data that knows why (the testbed) each cause's precision against the planted."""
    if not block:
        return ""
    counts = "  ".join(f"{c} {n}" for c, n in block["counts"].items() if n)
    pr = block.get("precision_recall") or {}
    prec = "  ".join(f"{c} {_fmt(v.get('precision'))}" for c, v in pr.items() if v.get("precision") is not None)
    return f"\n           causes: {counts or 'none'}" + (f"\n           precision vs planted: {prec}" if prec else "")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
