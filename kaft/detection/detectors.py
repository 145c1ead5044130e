"""Detection methods (``detection.name``, registry :data:`DETECTORS`; higher Score = fewer conflicts).

A detector is a class: its typed ``Settings``, its query :class:`~kaft.detection.probing.Layout`, the
:class:`~kaft.detection.probing.Need` it reads from a backend, how an item's per-query results become its record,
and what the records hold (sampled answers for self-align / DPO pairs; a greedy answer for
``answer_source=greedy``). The probe loop and the pipeline ask these, never a detector's name.

* ``diversified`` — KaFT §2.2, Eq. 1: each item is asked in ``num_orders`` option orders behind a k-shot prompt of
  other training items (App. A.3), each order ``num_samples`` times at temperature 0.7; Score = the fraction of
  answers equal to gold. The paper's ablations are switches (conf/detection/no_*.yaml): ``diverse_query: false``
  (one order, the original), ``response_sampling: false`` (one greedy answer per order); both off is ICL probing in
  the KaFT layout.
* ``icl`` — Ren et al. (2024): one order, Ren's k-shot layout, the answer is the argmax of the next-token
  distribution restricted to the option letters; Score = 1 if it is gold. The letter distribution is kept, and
  items whose top probability is ≤ ``confidence_threshold`` are flagged ``confident: false``.
* ``mc_conversion`` — free-form items turned into multiple choice first, then diversified
  (:mod:`kaft.detection.convert`).

Estimators (``detection.estimator``): ``sample`` is paper-faithful (generate, parse the letter). ``exact`` is the
expected value of the sampled Score with no sampling noise: per order one forward pass gives p_T(first token is
the gold letter) under softmax(logits / T), summed over every token that decodes to a response parsed as that
letter ("A", " A", "▁A", "<0x41>", "(A", tab + "A": :func:`~kaft.detection.core.letter_token_ids`); Score = the
mean over orders. It equals E[sampled Score] whenever the parsed answer is decided by the first generated token —
true when the model answers with a letter token followed by a non-letter (the layout every prompt here ends in).
It differs when the model first emits something else and names a letter later ("(" + "B", "The answer is B"):
``sample`` may count those, ``exact`` counts them as wrong; and it cannot see a letter token glued to more
letters (" Apple" parses as nothing, " A" + "pple" too). Cost: No forward passes instead of No × Nr generations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from kaft.detection.core import DetectionError, majority, score
from kaft.detection.probing import Layout, Need, probe
from kaft.detection.settings import ProbeSettings
from kaft.items import MCItem
from kaft.registry import Registry

DETECTORS: Registry = Registry("detection method", DetectionError)


class Detector(ABC):
    """One detection method, bound to its checked settings. Subclasses implement :meth:`need`, :meth:`record` and
    :meth:`saves_samples`; they override :meth:`layout` (default: the original order only), ``Settings`` (when they
    read more than :class:`ProbeSettings`) or :meth:`run` (when items need work before probing) as they need."""

    Settings: ClassVar[type[ProbeSettings]] = ProbeSettings
    #: the training items it reads: "mc" (multiple-choice items) or "freeform" (free-form items: MC conversion,
    #: generative detection); the data stage checks the data set against it
    input: ClassVar[str] = "mc"
    #: whether it judges responses with the job's verifier (``verifier`` config: then part of its cache key)
    reads_verifier: ClassVar[bool] = False

    def __init__(self, settings: ProbeSettings):
        self.settings = settings

    def layout(self) -> Layout:
        s = self.settings
        return Layout(1, s.shots, s.prompt, s.order_scheme)

    @abstractmethod
    def need(self) -> Need:
        """What to read from the backend for each query."""

    @abstractmethod
    def record(self, item: MCItem, per_query: Sequence[dict]) -> dict[str, Any]:
        """The record fields (``score`` at least) of one item from its queries' results, in order of its orders."""

    @abstractmethod
    def saves_samples(self) -> bool:
        """Whether the records carry sampled ``answers`` (what self-align and DPO pairs are built from)."""

    def holds_greedy(self) -> bool:
        """Whether the records hold the greedy answer to the original order (else the pipeline probes for it)."""
        return False

    def run(
        self,
        backend,
        items: Sequence,
        seed: int,
        domain: str,
        instruction: str | None = None,
        progress: bool = True,
        work_dir=None,
    ) -> list[dict]:
        return probe(self, backend, items, seed, domain, instruction, progress, work_dir)


@DETECTORS.register("diversified")
class Diversified(Detector):
    """KaFT's diversified probing, its ablations, and its exact estimator."""

    def layout(self) -> Layout:
        s = self.settings
        return Layout(s.num_orders if s.diverse_query else 1, s.shots, s.prompt, s.order_scheme)

    def need(self) -> Need:
        s = self.settings
        if s.estimator == "exact":
            return Need(
                letter_probs=True,
                temperature=s.temperature if s.response_sampling else 1.0,
                greedy=not s.response_sampling,
            )
        if s.response_sampling:
            return Need(
                letter_probs=False, temperature=s.temperature, samples=s.num_samples, max_new_tokens=s.max_new_tokens
            )
        return Need(letter_probs=False, temperature=0.0, samples=1, max_new_tokens=s.max_new_tokens)

    def record(self, item: MCItem, per_query: Sequence[dict]) -> dict[str, Any]:
        if "answers" in per_query[0]:
            return self._answered(item, [q["answers"] for q in per_query])
        return self._expected(item, [q["probs"] for q in per_query])

    def _answered(self, item: MCItem, answers: list[list[int]]) -> dict[str, Any]:
        gold = item.answer
        pred, conf = majority(answers)
        return {
            "answers": answers,
            "score": score(answers, gold),
            "unparsed": sum(a == -1 for per in answers for a in per),
            "pred": pred,
            "any_correct": any(a == gold for per in answers for a in per),
            "high_conf_error": pred != gold and conf > self.settings.high_conf_threshold,
        }

    def _expected(self, item: MCItem, probs: list[list[float]]) -> dict[str, Any]:
        """The exact estimator under sampling: the expected Score, and any_correct = P(one of No × Nr samples is gold)."""
        gold, n, nr = item.answer, len(probs), self.settings.num_samples
        mean = [sum(p[a] for p in probs) / n for a in range(len(item.options))]
        pred = max(range(len(mean)), key=lambda a: (mean[a], -a))
        return {
            "probs": probs,
            "score": sum(p[gold] for p in probs) / n,
            "pred": pred,
            "any_correct": 1.0 - math.prod((1.0 - p[gold]) ** nr for p in probs),
            "high_conf_error": pred != gold and mean[pred] > self.settings.high_conf_threshold,
            "n_equivalent_samples": nr * n,
        }

    def saves_samples(self) -> bool:
        return self.settings.estimator == "sample" or not self.settings.response_sampling

    def holds_greedy(self) -> bool:  # the letter probabilities of the original order (its first)
        return self.settings.estimator == "exact" and self.settings.response_sampling


@DETECTORS.register("icl")
class ICL(Detector):
    """Ren et al.'s ICL probing: one order, the argmax of the letter distribution."""

    def need(self) -> Need:
        return Need(letter_probs=True, temperature=1.0)

    def record(self, item: MCItem, per_query: Sequence[dict]) -> dict[str, Any]:
        p = per_query[0]["probs"]
        total = sum(p) or 1.0
        dist = [x / total for x in p]  # restricted to the option letters
        pred = max(range(len(dist)), key=lambda a: (dist[a], -a))
        return {
            "score": float(pred == item.answer),
            "pred": pred,
            "letter_probs": dist,
            "answers": [[pred]],
            "confident": dist[pred] > self.settings.confidence_threshold,
        }

    def saves_samples(self) -> bool:
        return True

    def holds_greedy(self) -> bool:
        return True
