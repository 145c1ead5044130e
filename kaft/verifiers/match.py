"""String-matching verifiers: ``exact`` (SQuAD / lm-eval exact_match) and ``contains`` (the reference appears as
whole words in the response: what a sentence answer such as "The capital of Zorvia is Belmora." needs)."""

from __future__ import annotations

from collections.abc import Sequence

from kaft.verifiers.base import VERIFIERS, Verifier, first_line, normalize_answer


@VERIFIERS.register("exact")
class Exact(Verifier):
    """Correct when the normalised first line of the response equals a normalised reference or alias."""

    name = "exact"

    def judge_one(self, question: str, references: Sequence[str], response: str) -> bool:
        got = normalize_answer(first_line(response))
        return any(got == normalize_answer(ref) for ref in references)


@VERIFIERS.register("contains")
class Contains(Verifier):
    """Correct when a normalised reference occurs as whole words in the normalised first line of the response."""

    name = "contains"

    def judge_one(self, question: str, references: Sequence[str], response: str) -> bool:
        got = f" {normalize_answer(first_line(response))} "
        return any(f" {normalize_answer(ref)} " in got for ref in references if normalize_answer(ref))
