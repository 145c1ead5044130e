"""The :class:`Verifier` base class, its registry and SQuAD's answer normalisation."""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from kaft import fields
from kaft.errors import ConfigError
from kaft.registry import Registry


class VerifierError(ConfigError):
    """A verifier config that cannot work (one line, before any model loads)."""


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (also lm-eval's exact_match with ignore_case / ignore_punctuation): lower-case,
    punctuation removed, the articles a / an / the removed, whitespace collapsed."""
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_line(response: str) -> str:
    """The response up to its first newline: generation stops there (``until: ["\\n"]``), a sampled continuation
    past it is not part of the answer."""
    return str(response).strip().split("\n", 1)[0]


class Verifier:
    """Judges responses; subclasses override :meth:`judge_one` (or :meth:`judge` to batch, as an LLM judge does).

    ``needs_model`` says whether it runs a model (the pipeline loads one only then); ``Settings`` is its typed schema
    (the ``verifier`` group's keys besides ``name``, :mod:`kaft.fields` style; none for the string matchers)."""

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    Settings: ClassVar[type] = fields.NoSettings

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self.settings = dict(settings or {})

    def judge_one(self, question: str, references: Sequence[str], response: str) -> bool | None:
        raise NotImplementedError

    def judge(self, items: Sequence, responses: Sequence[Sequence[str]]) -> list[list[bool | None]]:
        """Per item, per response: correct / incorrect / no verdict. ``items`` are free-form items (their
        ``question`` and ``references``)."""
        return [[self.judge_one(it.question, it.references, r) for r in resp] for it, resp in zip(items, responses)]


VERIFIERS: Registry[type[Verifier]] = Registry("verifier", VerifierError)


def parse_settings(cfg: Mapping[str, Any] | None) -> tuple[type[Verifier], Any]:
    """The verifier class a ``verifier`` config names and its checked settings (None = exact): an unknown name or key,
    or a bad value, is one :class:`VerifierError` line (``kaft.schema.check_config`` calls it before a model loads)."""
    cfg = dict(cfg or {"name": "exact"})
    cls = VERIFIERS.get(cfg.pop("name", "exact"))
    fields.reject_unknown(cls.Settings, "verifier", cfg, error=VerifierError)
    return cls, fields.parse(cls.Settings, cfg, "verifier", VerifierError)


def make_verifier(cfg: Mapping[str, Any] | None, model_loader: Callable[[], tuple[Any, Any]] | None = None) -> Verifier:
    """The verifier a ``verifier`` config names (``{"name": "exact"}``; None = exact), with its checked settings;
    one that runs a model (``needs_model``) is bound to ``model_loader`` (``() -> (model, tokenizer)``: the job's
    model, used unless its settings name another)."""
    cls, settings = parse_settings(cfg)
    verifier = cls(dataclasses.asdict(settings))
    if verifier.needs_model and model_loader is not None:
        verifier.bind(model_loader)
    return verifier


def no_verdicts(verdicts: Sequence[Sequence[bool | None]]) -> int:
    """How many responses got no verdict (``None``: an LLM judge's unparseable output), which callers discard."""
    return sum(v is None for per in verdicts for v in per)
