"""``detection=generative``: KaFT's Score over free-form responses, each judged by the job's verifier.

KaFT §2.2, Eq. 1 scores an item by the fraction of its No × Nr sampled answers that are correct. For multiple-choice
items "correct" is the parsed letter equal to gold; a free-form item has no letters, so each sampled response is
judged by a verifier (``verifier=exact | contains | llm_judge``, :mod:`kaft.verifiers`) against the item's reference
and aliases, and Score = the fraction of judged responses judged correct. This is the setting SMA (§2–3) argues for —
a model cannot guess a free-form answer right by chance, as it can a letter.

* **Nr** (``num_samples``, default 10) responses per query at ``temperature`` (default 0.7, as diversified probing),
  behind a ``shots``-shot free-form prompt of other training items (their question and training target:
  :func:`kaft.prompts.freeform_few_shot`, KaFT App. A.3's layout without options); the Nr samples of a query decode
  from one shared prefill (:func:`kaft.detection.responses.sample_prompts`). A response ends at its first newline or
  end-of-sequence token (decoding stops when all have), at most ``max_response_tokens`` tokens (its own key:
  ``max_new_tokens`` is the letter probes' length, which model configs set for multiple choice — the testbed's 2).
* **No** (``num_orders``): a free-form item has no options to reorder, so its queries are its question and then the
  paraphrases the data set gives in ``meta.paraphrases`` (a list of questions), at most ``num_orders`` in all. Without
  a paraphrase source No = 1 (the testbed's free-form rows have none). ``diverse_query: false`` keeps the question
  only; ``response_sampling: false`` asks for one greedy response per query.
* Verdicts: ``True`` / ``False``, or ``None`` (an LLM judge's unparseable output), which is discarded — left out of
  the Score's denominator — and counted (``unparsed``). An item with no judged response scores 0 (``n_judged: 0``).
* **The exact estimator does not apply** (``detection.estimator=exact`` is refused in one line): it sums the
  probabilities of the finite set of first tokens that name each option letter; a free-form answer is a sequence
  from an unbounded set, whose correctness only a verifier decides after decoding — there is no finite answer set to
  sum over in one forward pass.

Records hold ``responses`` and ``verdicts`` per query, ``score``, ``n_judged``, ``unparsed``, ``any_correct`` (a
response judged correct), ``pred`` (the most frequent normalised response) and ILP's ``high_conf_error`` (that
response judged wrong with a share above ``high_conf_threshold``). Chunks are cached and resumed as for every
detector (:func:`kaft.detection.probing.probe`); the verifier's settings are part of the detect cache key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kaft.detection.core import DetectionError, choose_shots
from kaft.detection.detectors import DETECTORS, Detector
from kaft.detection.probing import Layout, Need, probe
from kaft.detection.responses import sample_prompts
from kaft.detection.settings import ProbeSettings
from kaft.errors import ConfigError
from kaft.fields import integer
from kaft.items import FreeFormItem
from kaft.prompts import FREEFORM_INSTRUCTION, freeform_few_shot
from kaft.verifiers.base import normalize_answer


class EstimatorError(DetectionError, ConfigError):
    """A detection setting generative detection cannot take (a config error, raised before any model loads)."""


EXACT_REFUSED = (
    "detection.estimator=exact does not apply to detection=generative: a free-form answer has no finite set of "
    "first tokens whose probabilities one forward pass could sum (correctness is the verifier's, after decoding); "
    "use detection.estimator=sample"
)


@dataclass(frozen=True)
class GenerativeSettings(ProbeSettings):
    """Diversified probing's settings read over free-form responses (conf/detection/generative.yaml)."""

    num_orders: int = integer(10, 1, help="No: queries per item, its question then its meta.paraphrases (1 without)")
    max_response_tokens: int = integer(32, 1, help="response length (a response also ends at its first newline)")

    def check(self) -> None:
        super().check()
        if self.estimator == "exact":
            raise EstimatorError(EXACT_REFUSED)
        if self.prompt != "kaft":
            raise DetectionError(
                f"detection=generative asks free-form questions in KaFT's layout (detection.prompt=kaft); "
                f"{self.prompt!r} is a multiple-choice layout"
            )


def variants(item: FreeFormItem, n: int) -> list[str]:
    """The item's queries: its question, then its ``meta.paraphrases``, at most ``n``."""
    extra = item.meta.get("paraphrases") or []
    return [item.question, *[str(q) for q in extra if str(q).strip()]][:n]


def majority_response(responses: Sequence[str]) -> tuple[str, float, int]:
    """The most frequent response after normalisation (first seen wins a tie), its share and its first index."""
    norm = [normalize_answer(r) for r in responses]
    counts = Counter(norm)
    best = max(counts, key=lambda k: (counts[k], -norm.index(k)))
    first = norm.index(best)
    return responses[first], counts[best] / len(norm), first


@DETECTORS.register("generative")
class Generative(Detector):
    """Sample free-form responses, judge each with the verifier, Score = the fraction judged correct."""

    Settings = GenerativeSettings
    input = "freeform"
    reads_verifier = True

    def __init__(self, settings: GenerativeSettings):
        super().__init__(settings)
        self.verifier = None  # bound by kaft.detection.api.run_detection (the job's ``verifier`` config)

    def layout(self) -> Layout:
        s = self.settings
        return Layout(s.num_orders if s.diverse_query else 1, s.shots, s.prompt, s.order_scheme)

    def need(self) -> Need:
        s = self.settings
        n = s.max_response_tokens  # not max_new_tokens: the letter probes' length
        if s.response_sampling:
            return Need(letter_probs=False, temperature=s.temperature, samples=s.num_samples, max_new_tokens=n)
        return Need(letter_probs=False, temperature=0.0, samples=1, max_new_tokens=n)

    def saves_samples(self) -> bool:
        return False  # records hold responses and verdicts, not the option indices self-align / pairs read

    def prompts(
        self, items: Sequence[FreeFormItem], seed: int, domain: str, instruction, pool, offset: int
    ) -> list[tuple[int, str]]:
        """``(item index, prompt)`` per query: k solved examples of other training items, then a variant."""
        lay = self.layout()
        instruction = FREEFORM_INSTRUCTION if instruction is None else instruction
        candidates = choose_shots(len(pool), lay.shots, seed)
        out = []
        for i, it in enumerate(items):
            shots = [(pool[j].question, pool[j].target) for j in candidates if j != i + offset][: lay.shots]
            for q in variants(it, lay.n_orders):
                out.append((i, freeform_few_shot(shots, q, it.domain or domain, instruction)))
        return out

    def probe_chunk(self, backend, items, seed, domain, instruction, shot_pool, offset, chunk_seed) -> list[dict]:
        """One chunk's records (the hook :func:`~kaft.detection.probing.probe` calls instead of its MC queries)."""
        need = self.need()
        queries = self.prompts(items, seed, domain, instruction, shot_pool, offset)
        texts = sample_prompts(
            backend, [p for _, p in queries], need.samples, need.temperature, need.max_new_tokens, chunk_seed
        )
        verdicts = self.verifier.judge([items[i] for i, _ in queries], texts)
        by_item: list[list[int]] = [[] for _ in items]
        for qi, (i, _) in enumerate(queries):
            by_item[i].append(qi)
        records = []
        for it, qs in zip(items, by_item):
            rec: dict[str, Any] = {"id": it.id, "gold": it.answer, "queries": len(qs)}
            rec.update(self.record(it, [{"responses": texts[q], "verdicts": verdicts[q]} for q in qs]))
            records.append(rec)
        return records

    def record(self, item: FreeFormItem, per_query: Sequence[dict]) -> dict[str, Any]:
        responses = [q["responses"] for q in per_query]
        verdicts = [q["verdicts"] for q in per_query]
        flat_r = [r for per in responses for r in per]
        flat_v = [v for per in verdicts for v in per]
        judged = [v for v in flat_v if v is not None]
        pred, share, first = majority_response(flat_r)
        return {
            "responses": responses,
            "verdicts": verdicts,
            "score": sum(judged) / len(judged) if judged else 0.0,
            "n_judged": len(judged),
            "unparsed": len(flat_v) - len(judged),
            "any_correct": any(v is True for v in flat_v),
            "pred": pred,
            "high_conf_error": flat_v[first] is False and share > self.settings.high_conf_threshold,
        }

    def run(self, backend, items, seed, domain, instruction=None, progress=True, work_dir=None) -> list[dict]:
        if items and not isinstance(items[0], FreeFormItem):
            raise DetectionError(
                "detection=generative needs free-form training data (dataset.train.format: freeform, "
                "e.g. dataset=testbed_freeform)"
            )
        if self.verifier is None:
            raise RuntimeError("detection=generative runs with a verifier: kaft.detection.api.run_detection binds it")
        return probe(self, backend, items, seed, domain, instruction, progress, work_dir)
