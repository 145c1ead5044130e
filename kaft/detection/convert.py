"""MC conversion (ILP, 2024/25): turn free-form QA items into multiple choice so the same probing scores them.

A free-form item is (question, reference answer) with optional data-set distractors (FactualBench-style wrong
answers) and a ``group`` (relation / question type). Its multiple-choice version is the reference plus
``n_distractors`` wrong answers drawn, in the order of ``distractor_sources``, from

* ``dataset`` — the item's own distractors;
* ``group``   — reference answers of other items of the same group (plausible: same type of answer);
* ``model``   — the model's own free-form answers that differ from the reference (sampled, so they are the
  mistakes it is actually prone to).

No distractor equals the reference (compared case- and whitespace-insensitively), distractors are distinct, and
the gold position is drawn per (seed, item id): the conversion is deterministic per seed. Converted items are
scored with diversified probing (detector ``mc_conversion``, a :class:`~kaft.detection.detectors.Diversified`
that converts first); each record carries its multiple-choice ``item`` (training keeps the free-form items unless
``train.target=letter|option``: :mod:`kaft.trainset`), ``any_correct`` (any of the No × Nr answers gold: SMA's
BO-N, not ILP's post-SFT pass@N, :mod:`kaft.diagnosis`) and ILP's ``high_conf_error`` flag (majority answer ≠ gold
with share > τ_c).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaft import choices
from kaft import data as data_mod
from kaft.data import DataError
from kaft.detection.core import DetectionError, seeded_rng
from kaft.detection.detectors import DETECTORS, Diversified
from kaft.detection.probing import probe
from kaft.detection.settings import ProbeSettings
from kaft.fields import integer, unchecked
from kaft.items import FreeFormItem, MCItem

log = logging.getLogger(__name__)

DISTRACTOR_SOURCES = ("dataset", "group", "model")
FIELDS = ("id", "question", "answer", "distractors", "group", "response", "aliases")


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def normalize_freeform(
    rows: Iterable[Mapping], source: str, fields: Mapping | None = None, domain: str | None = None
) -> list[FreeFormItem]:
    """Validate free-form rows into items; multiple-choice rows (``options`` + integer ``answer``) are accepted too,
    their correct option becoming the reference. Errors name the source, row and field."""
    f = {k: k for k in FIELDS}
    f.update(dict(fields or {}))
    items, seen = [], set()
    for n, raw in enumerate(rows, start=1):

        def err(fld: str, msg: str) -> DataError:
            return DataError(f"{source}: row {n}: field '{fld}': {msg}")

        if not isinstance(raw, Mapping):
            raise DataError(f"{source}: row {n}: expected an object with fields {list(FIELDS[:3])}")
        question, answer = raw.get(f["question"]), raw.get(f["answer"])
        if isinstance(answer, bool):  # Python's 1 / 0: never an index, nor a reference text as written
            raise err(f["answer"], f"{str(answer).lower()} is not an answer: write the reference answer text (quoted)")
        if "options" in raw and isinstance(answer, int):
            opts = raw["options"]
            opts = choices.as_list(opts) if isinstance(opts, Mapping) else list(opts or [])  # the order of kaft/data.py
            if not 0 <= answer < len(opts):
                raise err(f["answer"], f"index {answer} out of range")
            answer = opts[answer]
        if not isinstance(question, str) or not question.strip():
            raise err(f["question"], "missing or empty (a free-form item needs a question string)")
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
            raise err(f["answer"], "missing or empty (the reference answer text)")
        dis = raw.get(f["distractors"]) or []
        if not isinstance(dis, (list, tuple)) or not all(isinstance(d, str) for d in dis):
            raise err(f["distractors"], "must be a list of strings")
        response, aliases = raw.get(f["response"]), raw.get(f["aliases"]) or []
        if response is not None and (not isinstance(response, str) or not response.strip()):
            raise err(f["response"], "must be a non-empty string (the long-form response to train on) or absent")
        if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
            raise err(f["aliases"], "must be a list of strings (other accepted forms of the reference answer)")
        meta = dict(raw.get("meta") or {})
        group = raw.get(f["group"]) or meta.get("relation")
        item_id = str(raw.get(f["id"], f"{source}#{n}"))
        if item_id in seen:
            raise err(f["id"], f"duplicate id {item_id!r}")
        seen.add(item_id)
        items.append(
            FreeFormItem(
                item_id,
                question.strip(),
                str(answer).strip(),
                tuple(dis),
                str(group) if group is not None else None,
                raw.get("domain") or domain,
                meta,
                response.strip() if response else None,
                tuple(a.strip() for a in aliases if a.strip()),
            )
        )
    if not items:
        raise DataError(f"{source}: no rows")
    return items


def load_freeform(spec: Mapping, domain: str | None = None, **ctx) -> list[FreeFormItem]:
    """Load a ``format: freeform`` data spec through the same sources as multiple-choice data."""
    data_mod.check_spec({k: v for k, v in spec.items() if k != "format"})
    src = spec.get("source", "local")
    skip = ("source", "fields", "answer_base", "limit", "name_in_results", "format")
    kwargs = {k: v for k, v in spec.items() if k not in skip}
    if src == "hub":
        kwargs["name"] = spec.get("name")
    rows = data_mod.SOURCES[src](**kwargs, **ctx)
    if spec.get("limit"):
        rows = (r for i, r in enumerate(rows) if i < int(spec["limit"]))
    return normalize_freeform(rows, data_mod.describe(spec), spec.get("fields"), domain)


def check_conversion(n_distractors: int, sources: Sequence[str]) -> None:
    unknown = [s for s in sources if s not in DISTRACTOR_SOURCES]
    if unknown or not sources:
        raise DetectionError(
            f"detection.distractor_sources must be a non-empty list of {list(DISTRACTOR_SOURCES)}, got {list(sources)}"
        )
    if n_distractors < 1:
        raise DetectionError(f"detection.n_distractors must be ≥ 1, got {n_distractors}")


def to_multiple_choice(
    items: Sequence[FreeFormItem],
    n_distractors: int,
    sources: Sequence[str],
    seed: int,
    generated: Mapping[str, Sequence[str]] | None = None,
) -> list[MCItem]:
    """The multiple-choice version of each item (see the module docstring for the rules)."""
    check_conversion(n_distractors, sources)
    by_group: dict[str, list[str]] = {}
    for it in items:
        if it.group is not None and _norm(it.answer) not in {_norm(a) for a in by_group.get(it.group, [])}:
            by_group.setdefault(it.group, []).append(it.answer)
    out = []
    for it in items:
        rng = seeded_rng(seed, "mc", it.id)
        pools: dict[str, list[str]] = {
            "dataset": list(it.distractors),
            "group": rng.sample(by_group.get(it.group, []), len(by_group.get(it.group, []))) if it.group else [],
            "model": list((generated or {}).get(it.id, [])),
        }
        chosen, seen = [], {_norm(it.answer)}
        for src in sources:
            for cand in pools[src]:
                if len(chosen) == n_distractors:
                    break
                if cand.strip() and _norm(cand) not in seen:
                    seen.add(_norm(cand))
                    chosen.append((cand.strip(), src))
        if len(chosen) < n_distractors:
            raise DetectionError(
                f"item {it.id!r}: only {len(chosen)} distinct distractor(s) from {list(sources)}, "
                f"need {n_distractors}; add a source to detection.distractor_sources or lower detection.n_distractors"
            )
        gold = rng.randrange(n_distractors + 1)
        options = [c for c, _ in chosen]
        options.insert(gold, it.answer)
        out.append(
            MCItem(
                id=it.id,
                question=it.question,
                options=options,
                answer=gold,
                domain=it.domain,
                meta={**it.meta, "freeform_answer": it.answer, "distractor_sources": [s for _, s in chosen]},
            )
        )
    return out


def _clean(text: str) -> str:
    for stop in ("\n", ".", "?"):
        text = text.split(stop)[0]
    return text.strip()


def generate_distractors(
    backend,
    items: Sequence[FreeFormItem],
    n_samples: int,
    max_new_tokens: int,
    seed: int,
    template: str = "Question: {question}",
) -> dict[str, list[str]]:
    """The model's own free-form answers (sampled at T = 1, cut at the first newline or full stop) that differ
    from the reference, most frequent first."""
    prompts = [template.format(question=it.question) for it in items]
    texts = backend.sample(prompts, int(n_samples), 1.0, int(max_new_tokens), seed)
    out = {}
    for it, resp in zip(items, texts):
        counts = Counter(c for c in (_clean(t) for t in resp) if c and _norm(c) != _norm(it.answer))
        out[it.id] = [c for c, _ in counts.most_common()]
    return out


@dataclass(frozen=True)
class ConversionSettings(ProbeSettings):
    """Diversified probing's settings plus the conversion's (conf/detection/mc_conversion.yaml documents them)."""

    n_distractors: int = integer(3, 1, help="wrong options per converted item")
    distractor_sources: list = unchecked(["dataset", "group"], help="where distractors come from, in priority order")
    generate_samples: int = integer(8, 1, help="free-form samples per item when `model` is a source")
    generate_max_new_tokens: int = integer(8, 1, help="tokens per free-form sample")

    def check(self) -> None:
        super().check()
        check_conversion(self.n_distractors, self.sources())

    def sources(self) -> list[str]:
        return list(self.distractor_sources or ["dataset", "group"])


#: the settings only MC conversion reads (kaft.run drops them when it probes the same items with diversified)
CONVERSION_KEYS = tuple(k for k in ConversionSettings.keys() if k not in ProbeSettings.keys())


@DETECTORS.register("mc_conversion")
class MCConversion(Diversified):
    """Convert free-form items to multiple choice, then score them as :class:`Diversified` does."""

    Settings = ConversionSettings
    input = "freeform"

    def run(
        self,
        backend,
        items: Sequence[FreeFormItem],
        seed: int,
        domain: str,
        instruction: str | None = None,
        progress: bool = True,
        work_dir=None,
    ) -> list[dict[str, Any]]:
        """Records of the converted items, each with its multiple-choice ``item``."""
        if items and not isinstance(items[0], FreeFormItem):
            raise DetectionError(
                "detection=mc_conversion needs free-form training data (dataset.train.format: freeform)"
            )
        s = self.settings
        generated = None
        if "model" in s.sources():
            generated = generate_distractors(backend, items, s.generate_samples, s.generate_max_new_tokens, seed)
        mc = to_multiple_choice(items, s.n_distractors, s.sources(), seed, generated)
        records = probe(self, backend, mc, seed, domain, instruction, progress, work_dir)
        for rec, item in zip(records, mc):
            rec["item"] = item.to_dict()
        return records
