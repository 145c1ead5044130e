"""Why an item was not learned: ILP's five causes, walked in order (seeds/002 §3.2, Fig. 3, App. Table 10).

ILP: "Each such [unlearned] sample is then sequentially examined under a set of diagnostic tests, each corresponding
to a hypothesized source of incomplete learning" (§3.2). :func:`attribute` walks every *unlearned* row of the
diagnosis (the per-item rows of :mod:`kaft.diagnosis`, ``results["diagnosis"]["items"]``) through the registered
causes in ``order`` -- ILP's by default -- and the first cause whose test matches is the item's cause; an unlearned
item no test claims is counted ``unattributed`` (ILP's Table 10 proportions sum to 78 %: ILP too leaves a rest).

The tests, each a registered :class:`Cause` (:data:`CAUSES`), read the row's signals and the job's context:

1. ``missing_knowledge`` (§3.2.1, Eq. 2/4) -- the base model did not know it: K(x) = 0 (its zero-shot answer is
   wrong) *without* a high-confidence error. kaft's reading: Eq. 4's "blind knowledge" is what the base fails to
   produce; a base that is wrong *and* confident holds a belief (cause 2), not a blank. Read literally (K(x) = 0
   alone), cause 1 would claim every item cause 2 could, since a high-confidence error has K(x) = 0.
2. ``pretraining_conflict`` (§3.2.2, Eq. 6) -- the base model prefers a wrong answer with confidence above τ_c
   (the row's ``base_high_conf_error``; τ_c is the diagnosis' setting ``diagnosis.tau_c``).
3. ``internal_conflict`` (§3.2.3, App. C.2) -- another training item's question is similar (a registered
   :mod:`~kaft.diagnosis.similarity`, at or above θ = ``similarity_threshold``) and its gold answer text differs.
   ILP then asks GPT-4 which label is right; kaft only detects the pair.
4. ``forgetting`` (§3.2.4) -- left-side forgetting in sequential training: the item came from a data set trained
   *before* the last one (its ``meta["stage"]``, an integer, the order of the data sets). When the items carry no
   stage, or only one, training was not sequential: the cause does not apply, and the result says so.
5. ``insufficient_optimisation`` (§3.2.5) -- "SFT data is not fully learned" (Table 10): what is left. By default
   every remaining unlearned item; with ``insufficient_js_max`` set, only those whose distribution SFT moved little,
   JS(P_base ‖ P_sft) <= that bound (Eq. 3: "insufficient or unstable updates", §3.1.5).

A row's signal that is ``None`` (not computable) never matches: no evidence, no cause. The extraction lost θ; kaft
chooses 0.9 (``tfidf``: a near-duplicate question; a different relation of the same entity stays well below it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any

from kaft import fields
from kaft.diagnosis.similarity import SIMILARITIES, check_embedding_installed, make_similarity, normalize_question
from kaft.errors import ConfigError
from kaft.registry import Registry

#: ILP's order (§3.2.1-3.2.5, Fig. 3, App. Table 10 types I-V)
ILP_ORDER = (
    "missing_knowledge",
    "pretraining_conflict",
    "internal_conflict",
    "forgetting",
    "insufficient_optimisation",
)
UNATTRIBUTED = "unattributed"


class Cause:
    """One diagnostic test. ``title`` is ILP Table 10's type, ``paper`` where ILP describes it."""

    name = ""
    title = ""
    paper = ""

    def not_applicable(self, ctx: Context) -> str | None:
        """Why this test cannot run for this job (then it is skipped), or ``None``."""
        return None

    def matches(self, i: int, row: Mapping, ctx: Context) -> bool:
        raise NotImplementedError


CAUSES: Registry[type[Cause]] = Registry("cause of an unlearned item")


def _check_order(label: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{label} must be a non-empty list of cause names, got {value!r}")
    for v in value:
        if v not in CAUSES:
            raise ConfigError(f"{label}: unknown cause {v!r}; choose from {CAUSES.names()}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{label} names a cause twice: {list(value)}")
    return list(value)


@dataclasses.dataclass(frozen=True)
class CauseSettings:
    """``diagnosis.causes.*``: the order of the tests and their settings."""

    order: list = fields.unchecked(list(ILP_ORDER), check=_check_order, help="the causes tested, first match wins")
    similarity: str = fields.choice("tfidf", SIMILARITIES, help="question similarity of internal conflicts")
    similarity_threshold: float = fields.number(
        0.9, 0.0, 1.0, help="θ: questions at least this similar are a pair (ILP §3.2.3; lost in extraction)"
    )
    embedding_model: str | None = fields.text(None, nullable=True, help="similarity=embedding: a local model path")
    insufficient_js_max: float | None = fields.number(
        None, 0.0, nullable=True, help="insufficient optimisation only when JS(P_base||P_sft) <= this (null: any)"
    )


def parse_settings(cfg: Mapping | CauseSettings | None) -> CauseSettings:
    """Checked settings (one line per bad key or value); ``embedding`` without its package is refused here."""
    if isinstance(cfg, CauseSettings):
        s = cfg
    else:
        cfg = dict(cfg or {})
        fields.reject_unknown(CauseSettings, "diagnosis.causes", cfg)
        s = fields.parse(CauseSettings, cfg, "diagnosis.causes", none_is_default=True)
    if s.similarity == "embedding":
        check_embedding_installed()
    return s


def _field_of(item: Any, key: str, default: Any = None) -> Any:
    return item.get(key, default) if isinstance(item, Mapping) else getattr(item, key, default)


def question_of(item: Any) -> str:
    return str(_field_of(item, "question", ""))


def gold_text(item: Any, row: Mapping | None = None) -> str:
    """The gold answer's text: a multiple-choice item's gold option, a free-form item's reference (else the row's
    gold index)."""
    options, answer = _field_of(item, "options"), _field_of(item, "answer")
    if options and isinstance(answer, int):
        return normalize_question(options[answer])
    if isinstance(answer, str):
        return normalize_question(answer)
    return str((row or {}).get("gold"))


def stage_of(item: Any) -> int | None:
    meta = _field_of(item, "meta") or {}
    stage = meta.get("stage") if isinstance(meta, Mapping) else None
    return stage if isinstance(stage, int) and not isinstance(stage, bool) else None


@dataclasses.dataclass
class Context:
    """What the tests read besides the row: all rows, the training items (same order), the settings."""

    rows: Sequence[Mapping]
    items: Sequence[Any]
    settings: CauseSettings

    @cached_property
    def conflicting(self) -> list[list[int]]:
        """Per item, the other items with a similar question and a different gold answer text (computed once)."""
        s = self.settings
        sim = make_similarity(s.similarity, s.embedding_model)
        near = sim.neighbours([question_of(it) for it in self.items], s.similarity_threshold)
        golds = [gold_text(it, r) for it, r in zip(self.items, self.rows)]
        return [[j for j in js if golds[j] != golds[i]] for i, js in enumerate(near)]

    @cached_property
    def stages(self) -> list[int | None]:
        return [stage_of(it) for it in self.items]


@CAUSES.register("missing_knowledge")
class MissingKnowledge(Cause):
    """The base model lacks the fact: K(x) = 0 and no high-confidence error (ILP §3.2.1, Eq. 2/4)."""

    name, title, paper = "missing_knowledge", "I. Base Model Knowledge Limitations", "ILP §3.2.1, Eq. 2/4"

    def matches(self, i, row, ctx):
        return row.get("base_correct") is False and row.get("base_high_conf_error") is not True


@CAUSES.register("pretraining_conflict")
class PretrainingConflict(Cause):
    """The base model confidently prefers a wrong answer (ILP §3.2.2, Eq. 6; τ_c is ``diagnosis.tau_c``)."""

    name, title, paper = "pretraining_conflict", "II. Conflicts Between SFT and Base Model", "ILP §3.2.2, Eq. 6"

    def matches(self, i, row, ctx):
        return row.get("base_high_conf_error") is True


@CAUSES.register("internal_conflict")
class InternalConflict(Cause):
    """A similar training question has a different gold answer (ILP §3.2.3, App. C.2)."""

    name, title, paper = "internal_conflict", "III. Knowledge Conflicts Between SFT Data", "ILP §3.2.3, App. C"

    def matches(self, i, row, ctx):
        return bool(ctx.conflicting[i])


@CAUSES.register("forgetting")
class LeftSideForgetting(Cause):
    """The item's data set was trained before the last one in sequential training (ILP §3.2.4, App. D)."""

    name, title, paper = "forgetting", "IV. Left-side Forgetting", "ILP §3.2.4, App. D"

    def not_applicable(self, ctx):
        if len({s for s in ctx.stages if s is not None}) < 2:
            return "training was not sequential (no two items carry different meta['stage'])"
        return None

    def matches(self, i, row, ctx):
        last = max(s for s in ctx.stages if s is not None)
        return ctx.stages[i] is not None and ctx.stages[i] < last


@CAUSES.register("insufficient_optimisation")
class InsufficientOptimisation(Cause):
    """What SFT did not finish: any remaining unlearned item, or only those it moved little (JS <= js_max)."""

    name, title, paper = "insufficient_optimisation", "V. Insufficient Training", "ILP §3.2.5, App. E"

    def matches(self, i, row, ctx):
        js_max = ctx.settings.insufficient_js_max
        if js_max is None:
            return True
        js = row.get("js")
        return js is not None and js <= js_max


def attribute(rows: Sequence[Mapping], items: Sequence[Any], settings: Mapping | CauseSettings | None = None) -> dict:
    """Each unlearned row's first matching cause in ``settings.order``.

    Returns ``per_item`` (a cause name, ``"unattributed"``, or ``None`` for an item that was learned or whose
    ``unlearned`` is unknown), ``counts`` (every cause of the order and ``unattributed``), ``unlearned`` (how many
    were walked), ``proportions`` (counts / unlearned: ILP Table 10's numbers), ``not_applicable`` ({cause: why})
    and ``order``."""
    if len(rows) != len(items):
        raise ValueError(f"attribute: {len(rows)} rows but {len(items)} items (one row per training item, in order)")
    s = parse_settings(settings)
    ctx = Context(rows, items, s)
    causes = [CAUSES.get(name)() for name in s.order]
    skipped = {c.name: why for c in causes if (why := c.not_applicable(ctx)) is not None}
    active = [c for c in causes if c.name not in skipped]
    per_item: list[str | None] = []
    for i, row in enumerate(rows):
        if row.get("unlearned") is not True:
            per_item.append(None)
            continue
        per_item.append(next((c.name for c in active if c.matches(i, row, ctx)), UNATTRIBUTED))
    counts = {name: per_item.count(name) for name in [*s.order, UNATTRIBUTED]}
    n = sum(counts.values())
    return {
        "per_item": per_item,
        "counts": counts,
        "unlearned": n,
        "proportions": {k: (v / n if n else None) for k, v in counts.items()},
        "not_applicable": skipped,
        "order": list(s.order),
    }


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def precision_recall(
    per_item: Sequence[str | None], planted: Sequence[str | None], causes: Sequence[str] = ILP_ORDER
) -> dict:
    """Per cause, the attribution against the planted truth over the *walked* (unlearned) items: precision = hits /
    items attributed to it, recall = hits / unlearned items planted with it (``None`` where nothing to divide by).
    An item planted with no cause (``None``) counts against the precision of whatever claims it."""
    if len(per_item) != len(planted):
        raise ValueError(f"precision_recall: {len(per_item)} attributions but {len(planted)} planted labels")
    walked = [(a, p) for a, p in zip(per_item, planted) if a is not None]
    out = {}
    for c in causes:
        hits = sum(a == c and p == c for a, p in walked)
        attributed, true = sum(a == c for a, _ in walked), sum(p == c for _, p in walked)
        out[c] = {
            "precision": _ratio(hits, attributed),
            "recall": _ratio(hits, true),
            "hits": hits,
            "attributed": attributed,
            "planted": true,
        }
    return out


#: data sets that know why their items would not be learned (the embedded testbed plants every cause) register
#: ``items -> [cause | None per item]`` here, returning ``None`` for items that are not theirs
GROUND_TRUTH: Registry[Callable[[Sequence[Any]], list | None]] = Registry("ground truth of causes")


def ground_truth(items: Sequence[Any]) -> tuple[str, list] | None:
    """The first registered ground truth that knows these items: ``(its name, planted cause per item)``."""
    for name, truth in GROUND_TRUTH.items():
        labels = truth(items)
        if labels is not None:
            return name, labels
    return None


def causes_block(
    rows: Sequence[Mapping], items: Sequence[Any], settings: Mapping | CauseSettings | None = None
) -> dict:
    """What results.json's ``diagnosis.causes`` holds: :func:`attribute`'s counts, proportions, what did not apply,
    the settings, and -- for items whose data set knows why (:data:`GROUND_TRUTH`: the testbed) -- the planted
    causes' counts and each cause's :func:`precision_recall`. ``per_item`` beside it: one cause (or ``None``) per
    row, for the per-item rows (``row["cause"]``)."""
    s = parse_settings(settings)
    out = attribute(rows, items, s)
    block = {k: v for k, v in out.items() if k != "per_item"}
    block["settings"] = dataclasses.asdict(s)
    truth = ground_truth(items)
    if truth is not None:
        name, planted = truth
        walked = [p for a, p in zip(out["per_item"], planted) if a is not None]
        block["ground_truth"] = name
        block["planted_unlearned"] = {c: walked.count(c) for c in s.order}
        block["precision_recall"] = precision_recall(out["per_item"], planted, s.order)
    return {"per_item": out["per_item"], "block": block}


__all__ = [
    "CAUSES",
    "GROUND_TRUTH",
    "ILP_ORDER",
    "UNATTRIBUTED",
    "Cause",
    "CauseSettings",
    "Context",
    "attribute",
    "causes_block",
    "gold_text",
    "ground_truth",
    "parse_settings",
    "precision_recall",
    "question_of",
    "stage_of",
]
