"""What an item trains on (``train.target``): the prompt and the target text after it, for every kind of item.

* ``letter``   — the option letter (``" B"``): KaFT's setting (MedQA items (q, o, a), §2.1) and the default for
  multiple-choice data;
* ``option``   — the letter and the option's text (``" B. Belmora"``);
* ``response`` — a response: a free-form item's long-form response (or its reference answer where it has none),
  or a multiple-choice item's ``meta["response"]`` (a data set's response / explanation field, e.g. Ren et al.'s
  explanations, App. A.1); the default for free-form data.

``auto`` picks ``letter`` for multiple-choice data and ``response`` for free-form data. One module decides this so
that training, SMA's pairs and the plausibility checks build the very same prompt and target.
"""

from __future__ import annotations

from collections.abc import Sequence

from kaft.errors import ConfigError
from kaft.items import FreeFormItem, MCItem, is_freeform, require_meta
from kaft.prompts import (
    DEFAULT_INSTRUCTION,
    FREEFORM_INSTRUCTION,
    answer_text,
    format_freeform,
    format_question,
    option_text,
)

TARGETS = ("auto", "letter", "option", "response")


def resolve(kind: str | None, items: Sequence) -> str:
    """The concrete target kind for a data set: ``auto`` (or None) becomes ``response`` for free-form items and
    ``letter`` for multiple-choice ones; a letter or option target on free-form items is refused (they have no
    options: train on MC conversion's items for that, see :func:`kaft.job`)."""
    kind = kind or "auto"
    if kind not in TARGETS:
        raise ConfigError(f"train.target={kind!r} is not one of {list(TARGETS)}")
    free = is_freeform(items)
    if kind == "auto":
        return "response" if free else "letter"
    if free and kind != "response":
        raise ConfigError(
            f"train.target={kind} needs multiple-choice items; free-form items train on train.target=response"
        )
    if kind == "response" and not free:
        require_meta(
            items,
            "response",
            needed_by="train.target=response trains on each multiple-choice item's response",
            fix="map a response / explanation column with dataset.train.fields.response, or use train.target=letter",
        )
    return kind


def prompt(item, domain: str = "general", instruction: str | None = None) -> str:
    """The item's prompt: the options block for a multiple-choice item, the free-form block otherwise; ``instruction``
    None = the layout's default instruction."""
    dom = item.domain or domain
    if isinstance(item, FreeFormItem):
        return format_freeform(item.question, dom, FREEFORM_INSTRUCTION if instruction is None else instruction)
    return format_question(
        item.question, item.options, dom, DEFAULT_INSTRUCTION if instruction is None else instruction
    )


def target(item, kind: str) -> str:
    """The target text after the prompt (starting with its space), for a resolved ``kind``."""
    if isinstance(item, FreeFormItem):
        return " " + item.target
    assert isinstance(item, MCItem)
    if kind == "letter":
        return answer_text(item.answer)
    if kind == "option":
        return option_text(item.answer, item.options)
    return " " + str(item.meta["response"]).strip()


def prompt_and_target(item, kind: str, domain: str = "general", instruction: str | None = None) -> tuple[str, str]:
    """``(prompt, target)`` of one training example."""
    return prompt(item, domain, instruction), target(item, kind)
