"""The testbed speaks in sentences: free-form responses built from the world's own templates (issue 21, item 7).

A split item's free-form ``response`` (``dataset.<spec>.response`` of a ``source: testbed`` spec, :data:`RESPONSES`):

* ``answer``            - none: the item trains on / is judged against its bare value ("Belmora"), as before (the
  default: the rows, and so every fingerprint and cache key built on them, are exactly what they were);
* ``sentence``          - the relation's first paraphrase template filled with the item's entity and gold value
  ("The capital of Zorvia is Belmora."): a multi-token response whose value token is one of many, the setting in
  which EAFT's per-token gate (EAFT §3, Eq. 2-3) acts within a response instead of as one weight per sample;
* ``sentence+evidence`` - that sentence, then the relation's second template as the evidence ("... Zorvia has its
  capital in Belmora."). kaft's reading of "with an explanation" (Ren et al. App. A.1): the testbed has no
  reasoning to explain, so its evidence for a fact is the fact restated as the corpus words it (for a known fact it
  is literally what the pretraining corpus says; for a contradicting item it states the item's gold value).

The gold value is the item's (for ``contradict`` items a value other than the memorised one), so a sentence response
carries exactly the knowledge the multiple-choice item does. Every template word is in the corpus, and every entity
and value is in a split prompt, so the testbed tokenizer (built from the world's texts, unchanged) knows every word
of every response; the tokenizer has no newline token and a response has no newline.

Each response is also listed in the item's ``aliases`` (with its first sentence): ``exact`` accepts the bare value
or the whole sentence, ``contains`` any response naming the value (:mod:`kaft.verifiers.match`).
"""

from __future__ import annotations

from collections.abc import Mapping

from kaft.datafiles import DataError
from kaft.testbed.templates import Relation

RESPONSES = ("answer", "sentence", "sentence+evidence")
#: ``context`` of a ``source: testbed`` spec: none, or each fact's evidence sentence as ``meta["context"]`` (what
#: ``train.context=true`` prepends at training time: Ren et al.'s contextualized IFT, Exp-II §5)
CONTEXTS = ("none", "evidence")


def check_response(mode: object) -> str:
    """The response mode, or one DataError line naming the key and the choices."""
    if mode not in RESPONSES:
        raise DataError(f"testbed data: response must be one of {list(RESPONSES)}, got {mode!r}")
    return str(mode)


def answer_sentence(rel: Relation, entity: str, value: str) -> str:
    """The fact as the relation's first (canonical) paraphrase template states it."""
    return rel.sentences[0].format(e=entity, v=value)


def evidence_sentence(rel: Relation, entity: str, value: str) -> str:
    """The fact restated in the relation's second template (every relation has at least two)."""
    return rel.sentences[1].format(e=entity, v=value)


def response_text(rel: Relation, entity: str, value: str, mode: str) -> str | None:
    """The free-form response of one fact for ``mode`` (None for ``answer``: the bare value is the target)."""
    if check_response(mode) == "answer":
        return None
    text = answer_sentence(rel, entity, value)
    return text + " " + evidence_sentence(rel, entity, value) if mode == "sentence+evidence" else text


def with_response(row: Mapping, relations: Mapping[str, Relation], mode: str) -> dict:
    """A split row (an :class:`~kaft.items.MCItem` dict) with its ``response`` and ``aliases`` for ``mode``; the row
    unchanged for ``answer``. The response is also stored as ``meta["response"]``, so that a multiple-choice spec
    with a response mode can train on it with ``train.target=response`` (:mod:`kaft.targets`)."""
    mode = check_response(mode)
    if mode == "answer":
        return dict(row)
    meta = dict(row["meta"])
    rel, value = relations[meta["relation"]], row["options"][row["answer"]]
    text = response_text(rel, meta["entity"], value, mode)
    aliases = list(dict.fromkeys([answer_sentence(rel, meta["entity"], value), text]))
    return {**row, "meta": {**meta, "response": text}, "response": text, "aliases": aliases}


def check_context(mode: object) -> str:
    """The context mode, or one DataError line naming the key and the choices."""
    if mode not in CONTEXTS:
        raise DataError(f"testbed data: context must be one of {list(CONTEXTS)}, got {mode!r}")
    return str(mode)


def with_context(row: Mapping, relations: Mapping[str, Relation], mode: str) -> dict:
    """A split row with ``meta["context"]``: the fact with the item's gold value in the relation's evidence template.
    Ren et al. had GPT-3.5 write "the world knowledge that is required to answer this question" (§5, App. Table 12);
    the testbed knows it exactly: for a contradicting item it states the item's gold value, not the memorised one.
    The row unchanged for ``none``."""
    if check_context(mode) == "none":
        return dict(row)
    meta = dict(row["meta"])
    value = row["options"][row["answer"]]
    return {**row, "meta": {**meta, "context": evidence_sentence(relations[meta["relation"]], meta["entity"], value)}}
