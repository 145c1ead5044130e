"""Verifiers: judge a free-form response against an item's reference answer (and its aliases).

Generative detection (Score = fraction of sampled responses judged correct, KaFT Eq. 1 over responses), SMA's
preference pairs (correct ≻ incorrect self-samples) and generative evaluation all ask one verifier, chosen by the
``verifier`` config group (``verifier=exact | contains | llm_judge``). A verifier returns, per response, ``True``
(correct), ``False`` (incorrect) or ``None`` (no verdict: an LLM judge's unparseable output), which callers discard
and count. A new verifier is one class registered in :data:`VERIFIERS`.
"""

from __future__ import annotations

from kaft.verifiers.base import (
    VERIFIERS,
    Verifier,
    VerifierError,
    make_verifier,
    no_verdicts,
    normalize_answer,
    parse_settings,
)
from kaft.verifiers.judge import LLMJudge, parse_verdict
from kaft.verifiers.match import Contains, Exact


def validate(cfg) -> None:
    """Check a ``verifier`` config (name, keys, values) in one line, before any model loads."""
    parse_settings(cfg)


__all__ = [
    "VERIFIERS",
    "Contains",
    "Exact",
    "LLMJudge",
    "Verifier",
    "VerifierError",
    "make_verifier",
    "no_verdicts",
    "normalize_answer",
    "parse_settings",
    "parse_verdict",
    "validate",
]
