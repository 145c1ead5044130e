"""SMA's preference pairs from free-form *responses* (Zhang et al., §3, App. A.2, App. B; Table 5's data sources).

SMA §3: "we sample n responses for each question" (n = 8; §4.1: "top-k=50, top-p=0.9, temperature=1.4 for
Qwen2"), each judged against the reference by a verifier (App. A.2's judge; kaft: the job's ``verifier``,
:mod:`kaft.verifiers`), and "the number of preference pairs (= correct count × incorrect count)" per question is
"randomly down-sample[d] up to m pairs" (m = 8); DPO then compares whole responses (summed log-probabilities over
their tokens, as TRL's DPO: :func:`kaft.losses.sequence_logps`). Responses without a verdict (an LLM judge's
unparseable output) are discarded, as SMA discards uncertain verdicts, and so are empty ones.

Table 5's data sources (``loss.pairs``), chosen ≻ rejected:

* ``self_self``       — a correct self-sample ≻ an incorrect one (SMA's method);
* ``dataset_self``    — the data set's reference response ≻ an incorrect self-sample;
* ``dataset_dataset`` — the reference ≻ the data set's own wrong answers: a free-form item's ``distractors``
  (FactualBench's GPT-4 wrong answers). kaft's choice where a data set has none (the testbed): the reference answers
  of the other items of the same ``group`` (relation), as MC conversion's ``group`` distractor source takes them.
  A multiple-choice item's own wrong answers are its other options. No sampling is needed.

Which response is trained on: the first line of a sample (what the verifier judged, :func:`first_line`; generation
stops at a newline), after the prompt of :func:`kaft.targets.prompt` (the free-form training prompt), with a
leading space like every kaft target. ``SFT on self answers`` (``loss=sft_self``, Table 5's first row, Table 6's
single / all labels) reads the same records: :func:`self_answers`.

These functions are pure (no model): :func:`sample_and_judge` takes a detection backend that samples and a verifier.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence

from kaft.errors import KaftError
from kaft.items import FreeFormItem, MCItem
from kaft.prompts import answer_text
from kaft.targets import prompt as item_prompt
from kaft.verifiers.base import first_line

RESPONSE_MODES = ("dataset_dataset", "dataset_self", "self_self")
SELF_LABELS = ("single", "all")  # SMA Table 6: SFT on one correct answer per question, or on all of them


class ResponsePairError(KaftError):
    """Sampled responses that do not belong to these items."""


def _rng(seed: int, salt: str, item_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|{salt}|{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _clean(response: str) -> str:
    return first_line(response).strip()


def _downsample(pairs: list[tuple], max_pairs: int, rng: random.Random) -> list[tuple]:
    """SMA's random down-sampling to ``max_pairs`` (kept in product order)."""
    if len(pairs) <= max_pairs:
        return pairs
    return [pairs[j] for j in sorted(rng.sample(range(len(pairs)), max_pairs))]


def _dataset_wrong(items: Sequence, i: int, rng: random.Random) -> list[str]:
    """The data set's own wrong answers of item i (see the module docstring), shuffled with ``rng``."""
    it = items[i]
    if isinstance(it, MCItem):
        return [o for j, o in enumerate(it.options) if j != it.answer]
    if it.distractors:
        return list(it.distractors)
    ref = {a.strip().lower() for a in it.references}
    pool = sorted({o.answer for o in items if o.group == it.group and o.answer.strip().lower() not in ref})
    rng.shuffle(pool)
    return pool if it.group is not None else []


def _text(it, answer: str) -> str:
    """The target text of an answer: a multiple-choice item answers with the option's letter."""
    if isinstance(it, MCItem):
        return answer_text(it.options.index(answer))
    return " " + answer


def response_pairs(
    items: Sequence,
    responses: Sequence[Sequence[str]] | None,
    verdicts: Sequence[Sequence[bool | None]] | None,
    seed: int,
    max_pairs: int,
    mode: str = "self_self",
    domain: str = "general",
    instruction: str | None = None,
) -> list[dict]:
    """DPO pairs, in item order, at most ``max_pairs`` per item, from ``responses[i]`` (item i's samples) and their
    ``verdicts[i]`` (True correct / False incorrect / None no verdict); ``mode`` is one of :data:`RESPONSE_MODES`
    (``dataset_dataset`` reads no samples: pass None). Each pair is ``{"index", "id", "prompt", "chosen",
    "rejected", "chosen_from", "rejected_from", "count"}``, ``count`` = how many samples were the rejected response
    (1 for a data set's answer). Deterministic in ``seed`` and independent of the other items."""
    if mode not in RESPONSE_MODES:
        raise ResponsePairError(f"response_pairs: unknown mode {mode!r}; choose one of {list(RESPONSE_MODES)}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ResponsePairError(f"response_pairs: max_pairs must be a positive integer, got {max_pairs!r}")
    sampled = mode != "dataset_dataset"
    if sampled and (responses is None or verdicts is None or not len(responses) == len(verdicts) == len(items)):
        raise ResponsePairError(
            f"response_pairs: pairs={mode} needs one list of responses and of verdicts per item ({len(items)} items)"
        )
    out: list[dict] = []
    for i, it in enumerate(items):
        rng = _rng(seed, "response_pairs", str(it.id))
        if sampled:
            judged = [(_clean(r), v) for r, v in zip(responses[i], verdicts[i]) if v is not None and _clean(r)]
            wrong = [r for r, v in judged if v is False]
            good = [r for r, v in judged if v is True] if mode == "self_self" else [_reference(it)]
        else:
            wrong, good = _dataset_wrong(items, i, rng), [_reference(it)]
        counts = Counter(wrong)
        picked = _downsample([(c, r) for c in good for r in wrong], max_pairs, rng)
        src_c, src_r = ("self" if mode == "self_self" else "dataset"), ("dataset" if not sampled else "self")
        prompt = item_prompt(it, domain, instruction)
        for c, r in picked:
            out.append(
                {
                    "index": i,
                    "id": it.id,
                    "prompt": prompt,
                    "chosen": _text(it, c),
                    "rejected": _text(it, r),
                    "chosen_from": src_c,
                    "rejected_from": src_r,
                    "count": counts[r] if sampled else 1,
                }
            )
    return out


def _reference(it) -> str:
    """The data set's reference response (a free-form item's long-form response where it has one)."""
    return it.options[it.answer] if isinstance(it, MCItem) else it.target.strip()


def self_answers(
    items: Sequence[FreeFormItem],
    responses: Sequence[Sequence[str]],
    verdicts: Sequence[Sequence[bool | None]],
    seed: int,
    labels: str = "single",
) -> list[tuple[int, str]]:
    """``(item index, target text)`` of SFT on the model's own correct answers (SMA Table 5 "SFT self"; Table 6):
    ``single`` — one correct response per question, drawn with ``seed`` ("For SFT, a single label is selected per
    question"); ``all`` — every distinct correct response. Items never answered correctly contribute none."""
    if labels not in SELF_LABELS:
        raise ResponsePairError(f"self_answers: labels must be one of {list(SELF_LABELS)}, got {labels!r}")
    out = []
    for i, it in enumerate(items):
        good = list(dict.fromkeys(_clean(r) for r, v in zip(responses[i], verdicts[i]) if v is True and _clean(r)))
        if good and labels == "single":
            good = [_rng(seed, "self_answers", str(it.id)).choice(good)]
        out += [(i, " " + g) for g in good]
    return out


def records_of(items: Sequence, records: Sequence[Mapping]) -> tuple[list[list[str]], list[list]]:
    """``(responses, verdicts)`` per item from :func:`sample_and_judge`'s records (checked to be these items')."""
    if len(records) != len(items):
        raise ResponsePairError(f"{len(items)} items but {len(records)} sampled-response records")
    for i, (it, rec) in enumerate(zip(items, records)):
        if str(rec.get("id")) != str(it.id):
            raise ResponsePairError(
                f"sampled-response record {i} is for item {rec.get('id')!r} but item {i} is {it.id!r}"
            )
    return [list(r.get("responses") or []) for r in records], [list(r.get("verdicts") or []) for r in records]


def sample_and_judge(
    backend,
    items: Sequence[FreeFormItem],
    sampling: Mapping,
    seed: int,
    verifier,
    domain: str = "general",
    instruction: str | None = None,
) -> list[dict]:
    """``sampling["num_samples"]`` responses per item to its free-form training prompt at SMA's ``temperature`` /
    ``top_k`` / ``top_p`` (``max_new_tokens`` each), judged by ``verifier``: the sampler of generative detection
    (:func:`kaft.detection.responses.sample_freeform` on ``backend``: one prefill per prompt shared by its samples,
    each ending at its first line, seeded). Records ``{"id", "responses", "verdicts", "n_correct", "no_verdict"}``."""
    from kaft.detection.responses import sample_freeform  # lazy: it imports the HF backend (torch)

    texts = sample_freeform(
        backend,
        None,
        items,
        int(sampling["num_samples"]),
        float(sampling["temperature"]),
        int(sampling["top_k"]),
        float(sampling["top_p"]),
        int(sampling["max_new_tokens"]),
        int(seed),
        domain=domain,
        instruction=instruction,
    )
    verdicts = verifier.judge(items, texts)
    return [
        {
            "id": it.id,
            "responses": resp,
            "verdicts": ver,
            "n_correct": sum(v is True for v in ver),
            "no_verdict": sum(v is None for v in ver),
        }
        for it, resp, ver in zip(items, texts, verdicts)
    ]
