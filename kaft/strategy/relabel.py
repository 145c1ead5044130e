"""Strategies that train on the model's own answers: KaFT's self-aligning baseline, Ren et al.'s HAR / INC / SELF
and their Exp-III mixture of INC and SELF at a consistency ratio (``ren_ratio``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from kaft import fields
from kaft.detection import majority
from kaft.strategy.base import ID_LIST_LIMIT, WRONG, Context, Pick, StrategyError, data_seed, draw, register

ANSWER_SOURCES = ("greedy", "majority")
CONFIDENCE = 0.5  # Ren et al. App. A.1: "responses with a confidence level exceeding 0.5"


@dataclasses.dataclass(frozen=True)
class SelfAlignSettings:
    answer_source: str = fields.choice(
        "greedy",
        ANSWER_SOURCES,
        hint=(
            " (greedy: the argmax letter of the original-order query, KaFT §2.2's r_i; majority: the most frequent "
            "sampled answer)"
        ),
        help="where the replacing answer r_i comes from",
    )


@dataclasses.dataclass(frozen=True)
class RenSettings:
    data_seed: int | None = data_seed()
    confident_only: bool = fields.flag(
        True,
        hint=" (Ren et al. App. A.1: true keeps answers with confidence > 0.5)",
        help="keep only answers with confidence > 0.5",
    )


@dataclasses.dataclass(frozen=True)
class RenRatioSettings(RenSettings):
    ratio: float = fields.number(
        0.5,
        0.0,
        1.0,
        hint=" (Ren et al. Exp-III, Fig. 2: the share of self-aligning samples; 0 = INC, 1 = SELF)",
        help="consistency ratio: the share of INC's queries that carry the model's own answer",
    )


def greedy_answer(rec: Mapping) -> int | None:
    """The model's greedy answer to the original-order query (original option index), where the record holds it:
    ``greedy`` (set by kaft.run's greedy probe), ICL's ``pred`` (argmax letter, one order: the original), or the
    argmax of the letter probabilities of the identity order (``exact`` estimator). None when it does not."""
    if rec.get("greedy") is not None:
        return int(rec["greedy"])
    if rec.get("letter_probs") is not None:
        return int(rec["pred"])
    for order, probs in zip(rec.get("orders") or [], rec.get("probs") or []):
        if list(order) == sorted(order):
            return max(range(len(probs)), key=lambda a: (probs[a], -a))
    return None


def _self_answer(ctx: Context, i: int, source: str) -> int:
    """Item i's own answer by the model under ``source`` (-1: none parsable)."""
    rec = ctx.records[i]
    if source == "greedy":
        g = greedy_answer(rec)
        if g is None:
            raise StrategyError(
                f"strategy=self_align answer_source=greedy: record {rec.get('id')!r} holds no greedy "
                f"answer to the original query (kaft.run probes for one; pass records with 'greedy')"
            )
        return g
    if not rec.get("answers") or not any(len(a) for a in rec["answers"]):
        raise StrategyError(
            f"strategy=self_align needs the sampled answers of detection, but record "
            f"{rec.get('id')!r} has none; use detection.estimator=sample (or detection=icl), or "
            f"strategy.answer_source=greedy"
        )
    return majority(rec["answers"])[0]


@register(
    "self_align",
    settings=SelfAlignSettings,
    needs_samples=lambda cfg: cfg.get("answer_source", "greedy") == "majority",
    needs_greedy=lambda cfg: cfg.get("answer_source", "greedy") == "greedy",
    relabels=True,
)
def _self_align(ctx: Context) -> Pick:
    """KaFT §4.1 "Self-aligning": each wrong-subset item trained on the model's own response r_i instead of a_i, so
    SFT aligns the format without teaching contradicting facts. ``answer_source``: ``greedy`` — the argmax letter of
    the original-order query (§2.2 defines r_i as the greedy response to (q_i, o_i)); ``majority`` — the most
    frequent of the diversified samples (over all orders, unparsable ignored, ties to the lowest index). Items of
    other subsets never change; a wrong item the model never answered parsably keeps its gold answer."""
    source = ctx.cfg.get("answer_source", "greedy")
    answers, same, unparsable, replaced_ids = {}, 0, 0, []
    for i in ctx.indices_in(WRONG):
        item, pred = ctx.items[i], _self_answer(ctx, i, source)
        if pred < 0:
            unparsable += 1
        elif not pred < len(item.options):
            raise StrategyError(
                f"strategy=self_align: record {ctx.records[i].get('id')!r} names option {pred}, but "
                f"item {item.id!r} has {len(item.options)} options; the detection records do not "
                f"match the training set (re-run detection, e.g. force a cache miss)"
            )
        elif pred == item.answer:
            same += 1
        else:
            answers[i] = pred
            replaced_ids.append(item.id)
    return Pick(
        list(range(len(ctx.items))),
        answers,
        info={
            "answer_source": source,
            "replaced": len(answers),
            "kept_gold_agrees": same,
            "kept_gold_unparsable": unparsable,
            "replaced_ids": replaced_ids[:ID_LIST_LIMIT],
        },
    )


def _model_answer(rec: Mapping, name: str) -> tuple[int, bool]:
    """An item's own answer by the model and whether it is confident: ICL's argmax letter and its ``confident``
    flag (top letter probability > 0.5), else the majority of the sampled answers with its share > 0.5."""
    if not rec.get("answers"):
        raise StrategyError(
            f"strategy={name} needs the model's answers from detection, but record "
            f"{rec.get('id')!r} has none; use detection=icl (Ren et al.) or estimator=sample"
        )
    pred, share = majority(rec["answers"])
    return pred, bool(rec["confident"]) if "confident" in rec else share > CONFIDENCE


def _ren_groups(ctx: Context, name: str) -> tuple[list[int], list[int], list[int], int]:
    """Model answers, HAR and INC pools, and how many items were set aside as answered non-confidently.

    Ren et al. §3.3: harmonious = the model answers right, incompatible = it answers, and not the gold answer;
    App. A.1: only answers with confidence > 0.5 count (``confident_only``, default true)."""
    confident_only = ctx.cfg.get("confident_only", True)
    preds, har, inc, unsure = [], [], [], 0
    for i, rec in enumerate(ctx.records):
        pred, confident = _model_answer(rec, name)
        preds.append(pred)
        if confident_only and not confident:
            unsure += 1
        elif pred == ctx.items[i].answer:
            har.append(i)
        elif 0 <= pred < len(ctx.items[i].options):
            inc.append(i)
    if not har and not inc:
        raise StrategyError(
            f"strategy={name}: the model answers none of the {unsure} training items confidently "
            f"(top probability > {CONFIDENCE}, Ren et al. App. A.1); set strategy.confident_only=false "
            f"to keep every answer"
        )
    if not har or not inc:
        raise StrategyError(
            f"strategy={name}: the model agrees with {'all' if not inc else 'none'} of the training "
            f"answers it answers ({unsure} set aside as not confident), so harmonious and "
            f"incompatible sets of equal size cannot be built"
        )
    return preds, har, inc, unsure


def _ren_pick(ctx: Context, name: str) -> Pick:
    """HAR, INC or SELF at one size n = min(|HAR|, |INC|), drawn with ``data_seed``; SELF = exactly INC's draw
    (Ren et al. §3.3: "the queries are exactly the same as those in the incompatible set") with the model's answers."""
    preds, har, inc, unsure = _ren_groups(ctx, name)
    n = min(len(har), len(inc))
    info = {
        "ren_size": n,
        "har": len(har),
        "inc": len(inc),
        "not_confident": unsure,
        "confident_only": ctx.cfg.get("confident_only", True),
    }
    if name == "har":
        return Pick(draw(ctx, har, n, "ren-har", ctx.data_seed()), info=info)
    keep = draw(ctx, inc, n, "ren-inc", ctx.data_seed())
    if name == "inc":
        return Pick(keep, info=info)
    if name == "ren_ratio":  # a seeded share of INC's draw relabelled; the rest keeps gold
        ratio = float(ctx.cfg.get("ratio", 0.5))
        keep_self = draw(ctx, keep, round(ratio * len(keep)), "ren-ratio", ctx.data_seed())
        answers = {i: preds[i] for i in keep_self}
        return Pick(keep, answers, info={**info, "ratio": ratio, "replaced": len(answers)})
    answers = {i: preds[i] for i in keep}
    return Pick(keep, answers, info={**info, "replaced": len(answers)})


@register("har", settings=RenSettings, needs_samples=True)
def _har(ctx: Context) -> Pick:
    """Ren et al. (2024) HAR: items the model already answers right (harmonious), as many as INC has."""
    return _ren_pick(ctx, "har")


@register("inc", settings=RenSettings, needs_samples=True)
def _inc(ctx: Context) -> Pick:
    """Ren et al. (2024) INC: items the model answers with another option than gold (incompatible)."""
    return _ren_pick(ctx, "inc")


@register("self", settings=RenSettings, needs_samples=True, relabels=True)
def _self(ctx: Context) -> Pick:
    """Ren et al. (2024) SELF: INC's items (same ids at the same ``data_seed``), each answer replaced by the model's
    own, so every training answer is wrong and consistent with the model."""
    return _ren_pick(ctx, "self")


@register("ren_ratio", settings=RenRatioSettings, needs_samples=True, relabels=True)
def _ren_ratio(ctx: Context) -> Pick:
    """Ren et al. (2024) Exp-III (§6, Figs. 2/4): INC's queries (same ids at the same ``data_seed``), a share
    ``ratio`` of them answered with the model's own (incompatible) answer as SELF does and the rest with gold as INC
    does. Ren et al. say only "the proportion of samples derived from the incompatible and the self-aligning group";
    kaft's reading: one query set (so only the answers differ between ratios), the relabelled share drawn by a seeded
    hash rank of the ids, ``round(ratio * n)`` of them. ``ratio=0`` is exactly INC, ``ratio=1`` exactly SELF."""
    return _ren_pick(ctx, "ren_ratio")


@register("none", train=False)
def _none(ctx: Context) -> Pick:
    """No training: the job reports the base model (the paper's base rows)."""
    return Pick([])
