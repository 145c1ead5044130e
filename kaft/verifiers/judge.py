"""``verifier=llm_judge``: SMA's 5-shot judge prompt (App. A.2, Figs. 10/11) run on a local model.

SMA judges each sampled response against the standard answer with a verifier model and "[Correct]" / "[Incorrect]"
verdicts that follow an analysis (App. A.2: "The verifier is supposed to show its analysis before providing the
judgment"). kaft fills the prompt of :mod:`kaft.verifiers.judge_prompts` (Fig. 11, or Fig. 10 with
``language: zh``) with the item's question, its standard answer and the response, generates greedily, and reads the
first verdict of the output (:func:`parse_verdict`). An output with no verdict is discarded: its verdict is ``None``,
and the judge counts them (``discarded``; the callers report them as ``unparsed`` / ``no_verdict``).

Where kaft chooses a reading:

* the judge model is ``verifier.model`` (a local directory or hub id), else the job's own model (SMA used GPT-4-class
  verifiers; a local model is what kaft can run offline) — with generative evaluation that is the model under
  evaluation;
* the standard answer is the item's long-form ``response`` where it has one (SMA's standard answers are sentences:
  "Wang Xiaochuan co-founded Baichuan Inc. with Ru Liyun on April 10, 2023."), else its reference answer and aliases
  joined by " / ";
* the candidate answer is the response's first line (generation stops there, as for the string verifiers).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from kaft import fields
from kaft.verifiers.base import VERIFIERS, Verifier, first_line, no_verdicts
from kaft.verifiers.judge_prompts import JUDGE_PROMPTS

#: a verdict in the paper's brackets: Fig. 11's [Correct] / [Incorrect], Fig. 10's 【正确】 / 【错误】
_VERDICT = re.compile(r"[\[【]\s*(correct|incorrect|正确|错误)\s*[\]】]", re.IGNORECASE)
_TRUE = {"correct", "正确"}


def parse_verdict(text: str) -> bool | None:
    """The first bracketed verdict of a judge's output: True ([Correct] / 【正确】), False ([Incorrect] / 【错误】),
    None when there is none. The first, because a greedy judge that goes on past its verdict starts another
    example (its own "[Question]: ..."), whose verdict is not about this response."""
    m = _VERDICT.search(str(text))
    if m is None:
        return None
    return m.group(1).lower() in _TRUE


def standard_answer(item) -> str:
    """What the prompt's [Standard Answer] holds (see the module docstring)."""
    response = getattr(item, "response", None)
    return response if response else " / ".join(item.references)


def judge_prompt(item, response: str, language: str = "en") -> str:
    """SMA's judge prompt for one (item, response)."""
    return JUDGE_PROMPTS[language].format(
        question=item.question, reference=standard_answer(item), response=first_line(response)
    )


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """``verifier.*`` of ``verifier=llm_judge`` (conf/verifier/llm_judge.yaml)."""

    model: str | None = fields.text(
        None, nullable=True, help="the judge model (a directory or hub id); null = the job's"
    )
    language: str = fields.choice("en", tuple(JUDGE_PROMPTS), help="en = SMA Fig. 11 (English); zh = Fig. 10")
    max_new_tokens: int = fields.integer(128, 1, help="the judge's output length (its analysis, then the verdict)")
    batch_size: int = fields.integer(8, 1, help="judge prompts per forward pass")
    dtype: str | None = fields.unchecked(
        None, help="the judge model's dtype when verifier.model is set (null = its own)"
    )


@VERIFIERS.register("llm_judge")
class LLMJudge(Verifier):
    """SMA's judge on a local model. :meth:`bind` gives it the job's model (used when ``model`` is null)."""

    name = "llm_judge"
    needs_model = True
    Settings = JudgeSettings

    def __init__(self, settings=None):
        super().__init__(settings)
        self.s = JudgeSettings(**{**fields.defaults_of(JudgeSettings), **self.settings})
        self._loader: Callable[[], tuple[Any, Any]] | None = None
        self._backend = None
        self.discarded = 0  # responses whose judge output held no verdict, over every call

    def bind(self, loader: Callable[[], tuple[Any, Any]]) -> LLMJudge:
        """The job's ``(model, tokenizer)`` loader, called on first use unless ``verifier.model`` names another."""
        self._loader = loader
        return self

    def _get_backend(self):
        if self._backend is None:
            from kaft.detection.hf_backend import HFBackend  # lazy: the string verifiers need no model code

            if self.s.model:
                from kaft import modeling

                model, tok = modeling.load({"dtype": self.s.dtype}, self.s.model)
            elif self._loader is not None:
                model, tok = self._loader()
            else:
                raise RuntimeError("verifier=llm_judge has no model: set verifier.model or bind the job's model")
            # one prompt per (item, response): nothing shared after the 5 shots' last blank line, so batch plainly
            self._backend = HFBackend(model, tok, self.s.batch_size, share_prefix=False)
        return self._backend

    def outputs(self, items: Sequence, responses: Sequence[Sequence[str]]) -> list[list[str]]:
        """The judge's raw output per item and response (greedy)."""
        prompts = [judge_prompt(it, r, self.s.language) for it, resp in zip(items, responses) for r in resp]
        if not prompts:
            return [[] for _ in items]
        backend = self._get_backend()
        flat = [o[0] for o in backend.sample(prompts, 1, 0.0, self.s.max_new_tokens, 0)]
        out, at = [], 0
        for resp in responses:
            out.append(flat[at : at + len(resp)])
            at += len(resp)
        return out

    def judge(self, items: Sequence, responses: Sequence[Sequence[str]]) -> list[list[bool | None]]:
        verdicts = [[parse_verdict(o) for o in per] for per in self.outputs(items, responses)]
        self.discarded += no_verdicts(verdicts)
        return verdicts

    def judge_one(self, question: str, references: Sequence[str], response: str) -> bool | None:
        from kaft.items import FreeFormItem

        item = FreeFormItem(id="", question=question, answer=references[0], aliases=tuple(references[1:]))
        return self.judge([item], [[response]])[0][0]
