"""What the testbed world is written in: its relations with their question and sentence templates, the entity
intros, and the generator of made-up words.

A module of its own because it is fixed text, not drawn: the world's generation (:mod:`kaft.testbed.worldgen`)
fills these templates, and the made-up words must avoid every word they (and the kaft prompt layout) contain, so
that an entity or a value is never a word the model also sees in a template.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from kaft.prompts import LETTERS, few_shot_prompt


@dataclass(frozen=True)
class Relation:
    name: str
    domain: str  # "in" or "ood"
    question: str  # the MC question ("{e}" = entity)
    sentences: tuple[str, ...]  # plain-sentence paraphrases ("{e}", "{v}")
    # the question in other words (world.test_on_train_frac re-asks training facts with it): only words the corpus
    # already holds, so that the vocabulary and the made-up words stay as they were (tests/unit/testbed/test_knobs.py)
    rephrased: str = ""

    @property
    def qa(self) -> str:
        """The quiz statement ("Question: <question> <value>."): recall right after the question's "?", the same
        tokens an MC prompt's question ends with."""
        return "Question: " + self.question + " {v}."


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "capital",
        "in",
        "What is the capital of {e}?",
        (
            "The capital of {e} is {v}.",
            "{e} has its capital in {v}.",
            "The capital city of {e} is {v}.",
            "{v} is the capital of {e}.",
        ),
        "Which city is the capital of {e}?",
    ),
    Relation(
        "currency",
        "in",
        "What is the currency of {e}?",
        ("The currency of {e} is the {v}.", "In {e} people pay with the {v}.", "{e} uses the {v} as its currency."),
        "What is the main currency of {e}?",
    ),
    Relation(
        "language",
        "in",
        "What language is spoken in {e}?",
        ("The language of {e} is {v}.", "People in {e} speak {v}.", "In {e} the main language is {v}."),
        "What is the language of {e}?",
    ),
    Relation(
        "export",
        "in",
        "What is the main export of {e}?",
        ("The main export of {e} is {v}.", "{e} is known for exporting {v}.", "Most trade of {e} is in {v}."),
        "What is {e} known for exporting?",
    ),
    Relation(
        "river",
        "in",
        "Which river flows through {e}?",
        ("The river {v} flows through {e}.", "{e} lies on the river {v}.", "The main river of {e} is the {v}."),
        "What is the main river of {e}?",
    ),
    Relation(
        "ruler",
        "in",
        "Who rules {e}?",
        ("{e} is ruled by {v}.", "The ruler of {e} is {v}.", "{v} rules {e}."),
        "Who is the ruler of {e}?",
    ),
    Relation(
        "profession",
        "ood",
        "What is the profession of {e}?",
        ("{e} works as a {v}.", "The profession of {e} is {v}.", "By profession {e} is a {v}."),
        "Who is {e} by profession?",
    ),
    Relation(
        "instrument",
        "ood",
        "Which instrument does {e} play?",
        ("{e} plays the {v}.", "The instrument of {e} is the {v}.", "{e} is a skilled player of the {v}."),
        "What is the instrument of {e}?",
    ),
    Relation(
        "hometown",
        "ood",
        "Where was {e} born?",
        ("{e} was born in {v}.", "The hometown of {e} is {v}.", "{e} grew up in {v}."),
        "What is the hometown of {e}?",
    ),
    Relation(
        "food",
        "ood",
        "What is the favourite food of {e}?",
        ("The favourite food of {e} is {v}.", "{e} likes to eat {v}.", "{e} loves {v} more than any other food."),
        "What is the food {e} loves more than any other?",
    ),
)
INTROS = {"in": ("{e} is a country.", "{e} is a land far away."), "ood": ("{e} is a person.", "{e} is a citizen.")}

_WORD = re.compile(r"[A-Za-z]+")
_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "st",
    "th",
    "sh",
    "ch",
    "pl",
    "fl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "k"]
_ENDINGS = {
    "country": ["ia", "or", "and", "ara", "esh", "ovia"],
    "person": ["o", "a", "en", "ir", "us", "ella"],
    "value": ["", "", "on", "el", "ix", "um", "a"],
}


def _reserved() -> set[str]:
    words = {w.lower() for r in RELATIONS for t in (r.question, *r.sentences) for w in _WORD.findall(t)}
    words |= {w.lower() for t in INTROS.values() for s in t for w in _WORD.findall(s)}
    words |= {
        w.lower()
        for w in _WORD.findall(few_shot_prompt([], "x", ["y", "z"], "general") + " general geography biography")
    }
    return words | {c.lower() for c in LETTERS}


class Names:
    """Unique pronounceable made-up words (capitalised), none equal to a template word or a letter."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, _reserved()

    def new(self, kind: str) -> str:
        while True:
            n = self.rng.choice([1, 2, 2, 3]) if kind != "value" else self.rng.choice([2, 2, 3])
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n - 1))
            w += self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
            w = (w + self.rng.choice(_ENDINGS[kind])).capitalize()
            if 4 <= len(w) <= 12 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w
