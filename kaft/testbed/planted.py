"""The cause the testbed world planted in each training item: the ground truth no paper has (issue 22 item 3).

ILP (seeds/002 §3.2, App. Table 10) attributes an unlearned item to one of five causes; the testbed knows, for each
training item, the one it was built to exhibit (``item.meta``, :mod:`kaft.testbed.world`):

========================  ==============================  ===============================================
meta                      planted cause                   why
========================  ==============================  ===============================================
``pair`` (either member)  ``internal_conflict``           a twin with the same question, another gold
``kind: unseen``          ``missing_knowledge``           the corpus never states the fact
``kind: contradict``      ``pretraining_conflict``        gold contradicts the memorised value
``stage`` < the last one  ``forgetting``                  trained before the last data set (sequential)
``kind: latent``          ``insufficient_optimisation``   a rare fact: stored weakly, needs more updates
``kind: known``           ``None``                        nothing to explain
========================  ==============================  ===============================================

Where two apply, the table's order decides: a pair member is planted ``internal_conflict`` (the pair is why it
exists). Note what that means against ILP's *attribution* order: the twin's gold also contradicts the value the base
model memorised, so ILP's walk, which tests pre-training conflicts before internal ones, may attribute it to
``pretraining_conflict`` -- a measured disagreement, not a bug (docs/diagnosis.md). The world has no sequential
training yet: ``stage`` is read when a caller sets it (``meta["stage"]``, the order of the data sets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BY_KIND = {
    "unseen": "missing_knowledge",
    "contradict": "pretraining_conflict",
    "internal": "internal_conflict",
    "latent": "insufficient_optimisation",
    "known": None,
}


def _meta(item: Any) -> Mapping:
    meta = item.get("meta") if isinstance(item, Mapping) else getattr(item, "meta", None)
    return meta or {}


def planted_cause(meta: Mapping, last_stage: int | None = None) -> str | None:
    """The planted cause of one training item from its ``meta`` (``None``: none planted, or not a testbed item)."""
    if meta.get("pair"):
        return "internal_conflict"
    stage = meta.get("stage")
    if last_stage is not None and isinstance(stage, int) and stage < last_stage:
        return "forgetting"
    return BY_KIND.get(meta.get("kind"))


def planted_causes(items: Sequence[Any]) -> list[str | None]:
    """Every training item's planted cause, in order (the last stage is the largest ``meta["stage"]`` present)."""
    stages = [s for it in items if isinstance(s := _meta(it).get("stage"), int)]
    last = max(stages) if len(set(stages)) > 1 else None
    return [planted_cause(_meta(it), last) for it in items]


__all__ = ["BY_KIND", "planted_cause", "planted_causes"]
