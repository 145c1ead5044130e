"""The training set a job trains on, beside the one detection scores: free-form data end to end.

MC conversion (ILP §3.1.1) turns free-form SFT items into multiple choice *for detection and analysis only*: "it
does not alter the original SFT training objective". So a job with ``detection=mc_conversion`` partitions and
selects on the converted items' scores and trains on the original free-form items (matched by id), on their
reference responses (``train.target=response``, what ``auto`` resolves to on free-form data). Training on the
converted multiple-choice items stays available as kaft's own reading: ``train.target=letter`` or ``option``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaft import data as data_mod
from kaft import targets
from kaft.detection import DETECTORS
from kaft.errors import ConfigError
from kaft.items import is_freeform, require_meta


def check_train_format(cfg: Any) -> None:
    """Free-form training data needs a detection that reads free-form items (its ``input``: MC conversion,
    generative detection), and such a detection needs free-form data; a one-line ConfigError otherwise."""
    freeform = cfg.dataset.train.get("format", "mc") == "freeform"
    reads = DETECTORS.get(cfg.detection.get("name", "diversified")).input
    if freeform == (reads == "freeform"):
        return
    if freeform:
        raise ConfigError(
            "free-form training data (dataset.train.format: freeform) needs a detection that reads free-form "
            f"items (detection=mc_conversion or detection=generative), not detection={cfg.detection.name}"
        )
    raise ConfigError(
        f"detection={cfg.detection.name} needs free-form training data (dataset.train.format: freeform, "
        "e.g. dataset=testbed_freeform)"
    )


def trains_converted(cfg: Any) -> bool:
    """Whether a job whose detection converts free-form items to multiple choice (``mc_conversion``) trains on the
    converted items: only with ``train.target=letter`` or ``option``, kaft's own reading. By default it trains on
    the free-form responses, as ILP does: MC conversion is for detection and analysis, "it does not alter the
    original SFT training objective" (ILP §3.1.1)."""
    return (cfg["train"].get("target") or "auto") in ("letter", "option")


def target_kind(cfg: Any, train: list) -> str | None:
    """The kind of target the loaded training items train on (``train.target`` resolved against them, a
    multiple-choice ``response`` checked for its field: a one-line ConfigError before any model loads), or None
    when training takes MC conversion's items, which exist only after detection (:func:`trains_converted`)."""
    if is_freeform(train) and trains_converted(cfg):
        return None
    return targets.resolve(cfg["train"].get("target"), train)


def training_items(cfg: Any, train: list, records: list[dict]) -> list:
    """What the job partitions, selects from and trains on, aligned with the detection ``records``: the loaded
    items; for records that carry a converted multiple-choice ``item`` (MC conversion), the free-form items in the
    records' order (matched by id), or the converted items themselves when :func:`trains_converted`."""
    if not (records and "item" in records[0]):
        return train
    if trains_converted(cfg):
        return [data_mod.MCItem.from_dict(r["item"]) for r in records]
    by_id = {it.id: it for it in train}
    missing = [r["id"] for r in records if r["id"] not in by_id]
    if missing:
        raise ConfigError(
            f"detection record {missing[0]!r} is not an item of the training set ({len(missing)} such); the "
            "detection artifact is of other data: re-run with force=true"
        )
    return [by_id[r["id"]] for r in records]


def check_context(cfg: Any, train: Sequence) -> None:
    """``train.context=true`` needs every training item's context (``meta["context"]``): one ConfigError line naming
    how to provide it, before any model loads."""
    if not cfg["train"].get("context", False):
        return
    require_meta(
        train,
        "context",
        needed_by="train.context=true prepends each training item's context",
        fix="map a knowledge / evidence column with dataset.train.fields.context=<column> (on the testbed: "
        "++dataset.train.context=evidence)",
    )


CONTEXT_SEPARATOR = " "  # the testbed tokenizer has no newline token; a space keeps every word a known one


def contextualize(cfg: Any, items: Sequence) -> list:
    """The items a job trains on under ``train.context=true``: each question preceded by its context (Ren et al.
    Exp-II, §5: "the knowledge is then concatenated with the original instruction, as well as the answer, to
    construct an augmented instance"; App. Table 13 puts it before the question). kaft's reading: the context opens
    the question text, so the prompt layout, the instruction and the target stay what they are and only training
    sees it: evaluation prompts carry no context (App. B: "we do not provide the knowledge required for the
    instruction during the testing phase"). The items unchanged otherwise."""
    if not cfg["train"].get("context", False):
        return list(items)
    return [dataclasses.replace(it, question=it.meta["context"] + CONTEXT_SEPARATOR + it.question) for it in items]


def train_target(trained: Any) -> dict | None:
    """results.json's ``train_target``: ``{kind, mean_label_tokens}`` from the adapter's ``train_log.json`` (None
    when nothing was trained; ``mean_label_tokens`` None for an adapter trained before kaft recorded it)."""
    if trained is None:
        return None
    try:
        saved = json.loads((Path(trained.adapter_dir) / "train_log.json").read_text())
    except (OSError, ValueError):
        saved = {}
    return {"kind": saved.get("target", "letter"), "mean_label_tokens": saved.get("mean_label_tokens")}
