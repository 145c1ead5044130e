"""Which evaluation task scores a benchmark: lm-eval's own task where lm-eval ships one, else kaft's own.

The KaFT paper evaluates with lm-evaluation-harness, so a benchmark that lm-eval ships is scored through that
registered task — its description, ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` and metric — with its
data pointed at a local JSONL (nothing is downloaded). A benchmark spec (``conf/dataset/benchmark/*.yaml``) says so:

    lm_eval:
      task: mmlu_{subject}     # a registered lm-eval task; {subject} is filled from each item (MMLU* = 6 tasks)
      doc: {question: question, choices: options, answer: answer}   # the task's row schema <- item fields

``doc`` rebuilds each row in the dataset schema the task reads, from the validated item: ``question``,
``options``, ``options.<i>``, ``answer`` (0-based index), ``answer_letter``, ``subject``, ``id``. A benchmark lm-eval
lacks keeps kaft's own task (:mod:`kaft.evaluate`), optionally with its own ``prompt`` template (``{question}``,
``{options}`` = "A. x\\nB. y", ``{last}``) instead of the run's English instruction — the Chinese benchmarks use
lm-eval's C-Eval layout. The choice is stored in each item's ``meta`` by :func:`tag_items` at the data stage, so it
is part of the data fingerprint (and of every cache key), and a bad task name stops the run before a model loads.

A ``format: freeform`` benchmark (:class:`~kaft.items.FreeFormItem`: question + reference answer and aliases) is
scored by generation instead (:mod:`kaft.evaluate_generative`); its ``lm_eval.task`` must be a ``generate_until`` task
(e.g. ``triviaqa``), its ``doc`` may nest (``answer: {value: answer, aliases: references}``) and reads the free-form
fields ``question``, ``answer``, ``aliases``, ``references`` (answer + aliases), ``group``, ``id``; its ``prompt``
template has only ``{question}``.

lm-eval 0.4.13: a dict passed to ``TaskManager.load`` is a whole new task (not merged with a registered one), so
:func:`task_override` loads the registered YAML itself (``_yaml_loader.load_yaml``, as lm-eval's own factory does)
and overrides only the data source and splits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from kaft.data import DataError, describe, load_items
from kaft.items import FreeFormItem, is_freeform
from kaft.prompts import LETTERS

LM_EVAL = "lm_eval"  # item.meta key: {"task": registered name, "doc": the row in the task's schema}
PROMPT = "eval_prompt"  # item.meta key: kaft's own task's prompt for this item
ITEM_FIELDS = ("question", "options", "answer", "answer_letter", "subject", "id")
FREEFORM_FIELDS = ("question", "answer", "aliases", "references", "group", "id")
FORMATS = ("mc", "freeform")


@functools.lru_cache(maxsize=1)
def registry() -> dict:
    """lm-eval's task index (name -> Entry with its YAML path); built once per process (several seconds)."""
    # lazy: lm-eval imports torch and datasets; needed only by an uncached evaluation
    from lm_eval.tasks import TaskManager

    level = logging.getLogger("lm_eval").level
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        return dict(TaskManager().task_index)
    finally:
        logging.getLogger("lm_eval").setLevel(level)


@functools.cache
def registered_config(task: str) -> dict:
    """The registered task's full config (includes and ``!function`` resolved), as lm-eval's factory loads it."""
    # lazy: lm-eval imports torch and datasets; needed only by an uncached evaluation
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = registry().get(task)
    if entry is None or entry.yaml_path is None or getattr(entry.kind, "name", None) != "TASK":
        raise DataError(
            f"lm_eval.task {task!r} is not a task in lm-eval's registry (lm_eval --tasks list shows "
            "them); fix the benchmark's lm_eval.task or drop lm_eval to use kaft's own task"
        )
    cfg = dict(load_yaml(entry.yaml_path, resolve_func=True))
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    return cfg


def task_override(task: str, name: str, data_file: str | Path) -> dict:
    """Registered ``task`` renamed to ``name``, reading its test docs from the local JSONL ``data_file``."""
    path = Path(data_file).resolve()
    return {
        **registered_config(task),
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(path.parent / "hf_datasets_cache")},
        "test_split": "test",
        "validation_split": None,
        "training_split": None,
        "fewshot_split": None,
        "num_fewshot": 0,
    }


# ----------------------------------------------------------------------------------------------- spec -> items
def _value(item, src, where: str):
    if isinstance(src, Mapping):  # a nested row field (triviaqa's answer: {value, aliases})
        return {k: _value(item, v, where) for k, v in src.items()}
    src = str(src)
    if isinstance(item, FreeFormItem):
        return list(getattr(item, src)) if src in ("references", "aliases") else getattr(item, src)
    if src.startswith("options."):
        k = src.split(".", 1)[1]
        if not k.isdigit() or int(k) >= len(item.options):
            raise DataError(
                f"{where}: item {item.id!r}: lm_eval.doc wants {src!r}, the item has {len(item.options)} options"
            )
        return item.options[int(k)]
    if src == "answer_letter":
        return LETTERS[item.answer]
    return list(item.options) if src == "options" else getattr(item, src)


def _lm_eval_meta(item, cfg: Mapping, where: str) -> dict:
    if isinstance(item, FreeFormItem):
        return _freeform_meta(item, cfg, where)
    try:
        task = str(cfg["task"]).format(subject=item.subject, id=item.id)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"{where}: lm_eval.task {cfg['task']!r}: placeholder {e} (use {{subject}} or {{id}})") from None
    if "{subject}" in str(cfg["task"]) and not item.subject:
        raise DataError(f"{where}: item {item.id!r} has no subject for lm_eval.task {cfg['task']!r}")
    try:
        choices = registered_config(task).get("doc_to_choice")
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    if isinstance(choices, list) and len(choices) != len(item.options):
        raise DataError(
            f"{where}: item {item.id!r} has {len(item.options)} options, lm-eval's {task} scores "
            f"{len(choices)} ({''.join(map(str, choices))})"
        )
    return {"task": task, "doc": {k: _value(item, str(v), where) for k, v in cfg["doc"].items()}}


def _freeform_meta(item: FreeFormItem, cfg: Mapping, where: str) -> dict:
    """A free-form item's lm-eval task (a ``generate_until`` one: it is scored by generation) and row."""
    try:
        task = str(cfg["task"]).format(id=item.id)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(
            f"{where}: lm_eval.task {cfg['task']!r}: placeholder {e} (a free-form benchmark has only {{id}})"
        ) from None
    try:
        kind = registered_config(task).get("output_type")
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    if kind != "generate_until":
        raise DataError(
            f"{where}: lm-eval's {task} is a {kind} task; a format: freeform benchmark is scored by generation and "
            "needs a generate_until task (e.g. triviaqa), or drop lm_eval to use kaft's own generative task"
        )
    return {"task": task, "doc": {k: _value(item, v, where) for k, v in cfg["doc"].items()}}


def _check_doc(doc: Mapping, fields: Sequence[str], where: str, prefix: str = "lm_eval.doc") -> None:
    for k, v in doc.items():
        if isinstance(v, Mapping) and fields is FREEFORM_FIELDS:
            _check_doc(v, fields, where, f"{prefix}.{k}")
        elif str(v) not in fields and not (fields is ITEM_FIELDS and str(v).startswith("options.")):
            more = " or options.<i>" if fields is ITEM_FIELDS else " (a free-form item's fields)"
            raise DataError(f"{where}: {prefix}.{k}: {v!r} is not an item field; use one of {', '.join(fields)}{more}")


def _check_lm_eval(cfg, where: str, freeform: bool = False) -> None:
    if not isinstance(cfg, Mapping) or not cfg.get("task") or not isinstance(cfg.get("doc"), Mapping) or not cfg["doc"]:
        raise DataError(
            f"{where}: lm_eval needs 'task' (an lm-eval task name) and 'doc' (its row fields <- item "
            f"fields), e.g. {{task: medmcqa, doc: {{question: question, opa: options.0, cop: answer}}}}"
        )
    _check_doc(cfg["doc"], FREEFORM_FIELDS if freeform else ITEM_FIELDS, where)


def render_prompt(template: str, item) -> str:
    """kaft's own task's prompt from a benchmark's ``prompt`` template (a free-form item has only ``{question}``)."""
    if isinstance(item, FreeFormItem):
        return template.format(question=item.question.strip())
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return template.format(question=item.question.strip(), options=opts, last=LETTERS[len(item.options) - 1])


def _check_prompt(template, where: str, freeform: bool = False) -> None:
    names = (
        {f for _, f, _, _ in string.Formatter().parse(template) if f is not None} if isinstance(template, str) else None
    )
    allowed = {"question"} if freeform else {"question", "options", "last"}
    if names is None or not names <= allowed or "question" not in names:
        more = " (a free-form benchmark has no options)" if freeform else " (and {options}, {last})"
        raise DataError(f"{where}: prompt must be a string with {{question}}{more}, got {template!r}")


def tag_items(items: Sequence, spec: Mapping, where: str) -> list:
    """``items`` with the benchmark's evaluation task (``lm_eval``) or prompt (``prompt``) in their ``meta``."""
    lm, prompt = spec.get("lm_eval"), spec.get("prompt")
    if lm is None and prompt is None:
        return list(items)
    if lm is not None and prompt is not None:
        raise DataError(f"{where}: give 'lm_eval' (lm-eval's own task) or 'prompt' (kaft's own task), not both")
    free = is_freeform(items)
    if lm is not None:
        _check_lm_eval(lm, where, free)
        meta = [{LM_EVAL: _lm_eval_meta(it, lm, where)} for it in items]
    else:
        _check_prompt(prompt, where, free)
        meta = [{PROMPT: render_prompt(prompt, it)} for it in items]
    return [dataclasses.replace(it, meta={**it.meta, **m}) for it, m in zip(items, meta)]


def load_benchmark(spec: Mapping, domain: str | None = None, **ctx) -> list:
    """:func:`kaft.data.load_items` for a benchmark (free-form items for ``format: freeform``, scored by generation):
    its items carry the lm-eval task or prompt it is scored with."""
    fmt = spec.get("format", "mc")
    if fmt not in FORMATS:
        raise DataError(f"{describe(spec)}: format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "freeform":
        from kaft.detection.convert import load_freeform  # lazy: kaft.detection is needed only for free-form data

        items = load_freeform(spec, domain, **ctx)
    else:
        items = load_items({k: v for k, v in spec.items() if k != "format"}, domain, **ctx)
    return tag_items(items, spec, describe(spec))


__all__ = [
    "FORMATS",
    "LM_EVAL",
    "PROMPT",
    "load_benchmark",
    "registered_config",
    "registry",
    "render_prompt",
    "tag_items",
    "task_override",
]
