"""The one schema every stage passes around: a multiple-choice item (kept apart from the loaders in :mod:`kaft.data`
so that data sources such as the embedded testbed can build items without importing the loaders back)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


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
