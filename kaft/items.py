"""The two item schemas every stage passes around: a multiple-choice item and a free-form one (kept apart from the
loaders in :mod:`kaft.data` so that data sources such as the embedded testbed can build items without importing the
loaders back)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from kaft.errors import ConfigError


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    options: list[str]
    answer: int
    subject: str | None = None
    domain: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> MCItem:
        return cls(
            id=d["id"],
            question=d["question"],
            options=list(d["options"]),
            answer=int(d["answer"]),
            subject=d.get("subject"),
            domain=d.get("domain"),
            meta=dict(d.get("meta") or {}),
        )


@dataclass(frozen=True)
class FreeFormItem:
    """A free-form QA item: a question and its short reference ``answer`` (what verifiers compare a response with,
    along with its ``aliases``), optional data-set ``distractors`` (FactualBench-style wrong answers: MC conversion's
    and SMA's dataset pairs' source), a ``group`` (relation / question type) and an optional long-form ``response``
    (a reference sentence or explanation; ``train.target=response`` trains on it, else on the answer)."""

    id: str
    question: str
    answer: str
    distractors: tuple[str, ...] = ()
    group: str | None = None
    domain: str | None = None
    meta: dict = field(default_factory=dict, compare=False)
    response: str | None = None
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Its fields; ``response`` and ``aliases`` only when set, so a data set without them keeps the fingerprint
        it had before they existed (and every cache key built on it)."""
        d = asdict(self)
        if d["response"] is None:
            del d["response"]
        if not d["aliases"]:
            del d["aliases"]
        return d

    @property
    def target(self) -> str:
        """What free-form training answers with: the long-form response where there is one, else the reference."""
        return self.response if self.response else self.answer

    @property
    def references(self) -> tuple[str, ...]:
        """Every answer a verifier accepts: the reference and its aliases."""
        return (self.answer, *self.aliases)


def require_meta(items, name: str, *, needed_by: str, fix: str) -> None:
    """One ``ConfigError`` line when some items lack ``meta[name]`` (a mapped column such as a context or a
    response), naming how many, the first, and the setting that provides it: the one check behind every setting
    that reads a per-item field, before any model loads."""
    missing = [it.id for it in items if not (it.meta or {}).get(name)]
    if missing:
        raise ConfigError(
            f"{needed_by}, but {len(missing)} of {len(items)} items have no {name} (first: {missing[0]!r}); {fix}"
        )


def is_freeform(items) -> bool:
    """Whether a data set (a sequence of items) is free-form."""
    return bool(items) and isinstance(items[0], FreeFormItem)
