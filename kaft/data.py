"""Stage 1 — data: load a multiple-choice QA set from any source into one validated schema.

Every loader yields raw rows; :func:`normalize_rows` maps them through the data set config's ``fields`` into
:class:`MCItem` and rejects malformed rows with one error naming source, row and field, before any model
is loaded. Sources are a registry (``local`` files, the Hugging Face ``hub``; plugins add their own, e.g. the
embedded testbed's ``testbed``). A source is ``reader(**spec_keys, cache_dir=..., config=...) -> rows``: it gets the
data spec's own keys plus the job's context (the cache root and the whole job config as a plain dict) and takes
``**_`` for what it does not use, so this module never needs to know what a source reads.

Data is read as written (:mod:`kaft.choices`): an options object keeps a numeric order for numeric keys ("1".."10"),
letter order for letter keys and the written order otherwise; ``true`` / ``false`` answers are errors, not 1 / 0;
text files may start with a UTF-8 byte-order mark (Excel writes one), which is not part of the first column's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kaft import choices, hub
from kaft.adapters import ADAPTERS, HALUEVAL_TASKS, adapt_halueval, describe  # noqa: F401 (re-exported)
from kaft.datafiles import DataError, folder_message, read_local
from kaft.items import MCItem
from kaft.prompts import LETTERS
from kaft.registry import Registry

DEFAULT_FIELDS = {
    "id": "id",
    "question": "question",
    "options": "options",
    "answer": "answer",
    "subject": "subject",
    "domain": "domain",
    # opt-in (fields.response: <column>): a response / explanation column, kept as meta["response"], what
    # train.target=response trains a multiple-choice item on (kaft.targets)
    "response": None,
    # opt-in (fields.context: <column>): the knowledge an item needs, kept as meta["context"], what train.context=true
    # prepends to its question at training time (Ren et al. Exp-II, kaft.trainset.contextualize)
    "context": None,
}


# ----------------------------------------------------------------------------------------------- normalising
def _err(source: str, row: int, fld: str, msg: str) -> DataError:
    return DataError(f"{source}: row {row}: field '{fld}': {msg}")


def _get(raw: Mapping, key: str, source: str, row: int, fld: str):
    if key not in raw or raw[key] is None or (isinstance(raw[key], str) and raw[key] == "" and fld != "subject"):
        raise _err(source, row, fld, f"missing (expected column '{key}')")
    return raw[key]


def _options(raw: Mapping, spec, source: str, row: int) -> list[str]:
    if isinstance(spec, (list, tuple)):  # one column per option, e.g. MedMCQA's opa..opd
        opts = [_get(raw, k, source, row, "options") for k in spec]
    else:
        opts = _get(raw, spec, source, row, "options")
        if isinstance(opts, str):  # CSV cells hold JSON
            try:
                opts = json.loads(opts)
            except json.JSONDecodeError:
                raise _err(source, row, "options", "not a list (a CSV cell must hold a JSON list or object)")
        if isinstance(opts, Mapping):  # {"A": "...", "B": "..."} as in MedQA on the hub; {"1": ..., "10": ...}
            opts = choices.as_list(opts)
    if not isinstance(opts, (list, tuple)):
        raise _err(source, row, "options", f"expected a list of strings, got {type(opts).__name__}")
    if len(opts) < 2:
        raise _err(source, row, "options", f"needs at least 2 options, got {len(opts)}")
    if len(opts) > len(LETTERS):
        raise _err(source, row, "options", f"at most {len(LETTERS)} options are supported, got {len(opts)}")
    out = []
    for o in opts:
        if o is None or not str(o).strip():
            raise _err(source, row, "options", "an option is empty")
        out.append(str(o))
    return out


def _answer(value: Any, options: list[str], base: int, source: str, row: int) -> int:
    """An answer given as an index (``answer_base`` 0 or 1) or as a letter ("B"); see :mod:`kaft.choices`."""
    try:
        return choices.answer_index(value, options, base)
    except ValueError as e:
        raise _err(source, row, "answer", str(e)) from None


def normalize_rows(
    rows: Iterable[Mapping],
    source: str,
    fields: Mapping | None = None,
    answer_base: int = 0,
    domain: str | None = None,
    id_prefix: str = "",
) -> list[MCItem]:
    """Validate and convert raw rows; row numbers in errors are 1-based as a person counts them."""
    f = {**DEFAULT_FIELDS, **(fields or {})}
    items, seen = [], {}
    for row, raw in enumerate(rows, start=1):
        if not isinstance(raw, Mapping):
            raise DataError(f"{source}: row {row}: expected an object, got {type(raw).__name__}")
        has_id = f["id"] in raw and raw[f["id"]] not in (None, "")
        item_id = f"{id_prefix}{raw[f['id']]}" if has_id else f"{id_prefix}{row - 1}"
        if item_id in seen:
            raise _err(source, row, "id", f"duplicate id {item_id!r} (first seen in row {seen[item_id]})")
        seen[item_id] = row
        question = str(_get(raw, f["question"], source, row, "question"))
        opts = _options(raw, f["options"], source, row)
        ans = _answer(_get(raw, f["answer"], source, row, "answer"), opts, answer_base, source, row)
        subject = raw.get(f["subject"]) if f.get("subject") else None
        dom = raw.get(f["domain"]) if f.get("domain") else None
        meta = dict(raw.get("meta")) if isinstance(raw.get("meta"), Mapping) else {}
        if f.get("response") and raw.get(f["response"]) not in (None, ""):  # train.target=response trains on it
            if not isinstance(raw[f["response"]], str):
                raise _err(source, row, f["response"], "a response must be text")
            meta["response"] = raw[f["response"]]
        if f.get("context") and raw.get(f["context"]) not in (None, ""):  # train.context=true prepends it
            if not isinstance(raw[f["context"]], str):
                raise _err(source, row, f["context"], "a context must be text")
            meta["context"] = raw[f["context"]]
        items.append(
            MCItem(
                id=str(item_id),
                question=question,
                options=opts,
                answer=ans,
                subject=None if subject in (None, "") else str(subject),
                domain=str(dom) if dom not in (None, "") else domain,
                meta=dict(meta),
            )
        )
    if not items:
        raise DataError(f"{source}: no rows")
    return items


# ----------------------------------------------------------------------------------------------- sources
#: name -> ``reader(**spec_keys, cache_dir=..., config=...)`` yielding raw rows (see the module docstring)
SOURCES: Registry[Callable[..., Iterator[Mapping]]] = Registry("data source", error=DataError)


SOURCES.register("local")(read_local)
_read_local = read_local  # the subsets and join readers read local files too


@SOURCES.register("hub")
def _read_hub(
    path: str, name: str | None = None, split: str = "train", revision: str | None = None, **_
) -> Iterator[Mapping]:
    """Rows from the Hugging Face hub (or its local cache when HF_DATASETS_OFFLINE=1)."""
    import datasets  # lazy: datasets is slow to import; needed only for hub or parquet data

    try:
        ds = datasets.load_dataset(path, name, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - the cause and what to do, in one line (kaft/hub.py)
        raise DataError(
            hub.dataset_error(e, path, name, split, revision, f"config {name!r}, split {split!r}")
        ) from None
    yield from ds


def check_spec(spec: Mapping) -> None:
    """Cheap checks done at config time (before any model loads): known source, local file exists."""
    src = spec.get("source", "local")
    SOURCES.get(src)  # an unknown name: one DataError line listing the sources (plugins included)
    if src == "local":
        if not spec.get("path") or spec.get("path") == "???":
            raise DataError(
                "a local data set needs a path: set dataset.train.path=/abs/train.jsonl and "
                "dataset.eval.<benchmark>.path=/abs/test.jsonl"
            )
        path = Path(str(spec["path"])).expanduser()
        if not path.exists():
            raise DataError(f"{spec['path']}: no such file (check the dataset config's path)")
        if path.is_dir() and not spec.get("subsets") and path.suffix.lower() != ".parquet":
            raise DataError(folder_message(path))
    _base(spec)
    if src in ("local", "hub") and "context" in spec:  # only the testbed's source writes contexts
        raise DataError(
            f"{describe(spec)}: 'context' ({spec['context']!r}) is read only by the testbed source; map a data "
            "set's knowledge / evidence column with fields: {context: <column>}"
        )
    if src in ("local", "hub") and "response" in spec:  # only the testbed's source builds responses
        raise DataError(
            f"{describe(spec)}: 'response' ({spec['response']!r}) is read only by the testbed source; map a data "
            "set's response / explanation column with fields: {response: <column>}"
        )
    if src == "hub" and not spec.get("path"):
        raise DataError("a hub data set needs 'path' (the hub id, e.g. GBaker/MedQA-USMLE-4-options)")


def load_items(spec: Mapping, domain: str | None = None, **ctx) -> list[MCItem]:
    """Load and validate one data spec (a dataset config's ``train`` or one of its ``eval`` entries); ``ctx``
    (``cache_dir``, ``config``) goes to the source's reader."""
    check_spec(spec)
    src = spec.get("source", "local")
    kwargs = {k: v for k, v in spec.items() if k not in ("source", "fields", "answer_base", "limit", "name_in_results")}
    if src == "hub":
        kwargs["name"] = spec.get("name")
    rows = read_spec_rows(spec, kwargs, ctx)  # subsets, data_files, join, filter, adapters (row adapters below)
    limit = spec.get("limit")
    if limit:
        rows = (r for i, r in enumerate(rows) if i < int(limit))
    return normalize_rows(
        rows, describe(spec), spec.get("fields"), _base(spec), domain=domain, id_prefix=str(spec.get("id_prefix", ""))
    )


def _base(spec: Mapping) -> int:
    """The spec's ``answer_base`` (0 or 1), or one DataError line naming the key."""
    try:
        return choices.parse_base(spec.get("answer_base", 0), "answer_base")
    except ValueError as e:
        raise DataError(f"{describe(spec)}: {e}") from None


def fingerprint(items: Iterable[MCItem]) -> str:
    """Content hash of a normalised data set: the cache key part that says 'same data'."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def write_jsonl(items: Iterable[MCItem], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps(it.to_dict(), ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[MCItem]:
    with open(path, encoding="utf-8") as fh:
        return [MCItem.from_dict(json.loads(line)) for line in fh if line.strip()]


# ----------------------------------------------------------------------------------------------- row adapters
# Hub benchmarks whose rows `fields` alone cannot map. A data spec may add, applied in this order between the
# source and normalize_rows (so `limit` counts the rows that survive them):
#
#   subsets: [a, b]        read the source once per subset and concatenate: a hub config name each (MMLU*'s
#                          subjects); for a local source `path` is a directory holding <subset>.jsonl/.json/
#                          .csv/.parquet. Rows without a subject column get `subject: <subset>`, rows without an
#                          id get `<subset>-<n>`, so ids stay unique.
#   data_files: <glob>     hub only: datasets.load_dataset(path, data_files=...) for repos without configs.
#   join: {path, key, columns}  copy `columns` from a local JSON/JSONL/CSV file into each row, matched on the
#                          `key` column (CMB's test answers ship in a separate file); a row without a match is an
#                          error naming its key.
#   filter: {column: cond} keep rows whose column matches every cond: a scalar (equal), a list (one of), or
#                          {pattern: regex} (full match of str(value)), e.g. single-answer questions only.
#   adapter: name | [names]  reshape rows (ADAPTERS below); parameters are plain spec keys.
#   drop_empty_options: true  drop null / blank options (dict or list), e.g. the unused E/F slots that a
#                          datasets struct column fills with None. A blank option before a non-blank one is
#                          kept (and then rejected by normalize_rows), since dropping it would shift letters.
ROW_SPEC_KEYS = (
    "subsets",
    "data_files",
    "join",
    "filter",
    "adapter",
    "drop_empty_options",
    "answer_text",
    "halueval_seed",
    "option_lines",
)

#: name -> ``adapter(rows, spec)`` yielding reshaped rows


def _spec_fields(spec: Mapping) -> dict:
    return {**DEFAULT_FIELDS, **(spec.get("fields") or {})}


def _read_hub_data_files(
    path: str, data_files, split: str = "train", revision: str | None = None, name: str | None = None
) -> Iterator[Mapping]:
    import datasets  # lazy: datasets is slow to import; needed only for hub or parquet data

    try:
        ds = datasets.load_dataset(path, name, data_files=data_files, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - one line, as _read_hub
        raise DataError(hub.dataset_error(e, path, name, split, revision, f"data_files {data_files!r}")) from None
    yield from ds


def _read_subset_dir(directory: str, subset: str) -> Iterator[Mapping]:
    d = Path(directory).expanduser()
    for ext in (".jsonl", ".json", ".csv", ".parquet"):
        if (d / f"{subset}{ext}").exists():
            return _read_local(str(d / f"{subset}{ext}"))
    raise DataError(f"{d}: no file for subset {subset!r} (expected {subset}.jsonl, .json, .csv or .parquet)")


def _read_source(src: str, kwargs: Mapping, spec: Mapping, ctx: Mapping) -> Iterator[Mapping]:
    kw = {k: v for k, v in kwargs.items() if k not in ROW_SPEC_KEYS}
    if src == "hub" and spec.get("data_files"):
        return _read_hub_data_files(
            kw["path"], spec["data_files"], kw.get("split", "train"), kw.get("revision"), kw.get("name")
        )
    return SOURCES[src](**kw, **ctx)


def _read_subsets(src: str, kwargs: Mapping, spec: Mapping, ctx: Mapping) -> Iterator[Mapping]:
    f = _spec_fields(spec)
    for subset in spec["subsets"]:
        if src == "local":
            if not Path(str(spec["path"])).expanduser().is_dir():
                raise DataError(f"{spec['path']}: with 'subsets' a local path must be a directory of <subset> files")
            rows = _read_subset_dir(str(spec["path"]), str(subset))
        else:
            rows = _read_source(src, {**kwargs, "name": subset}, spec, ctx)
        for n, row in enumerate(rows):
            row = dict(row)
            if f.get("subject") and row.get(f["subject"]) in (None, ""):
                row[f["subject"]] = str(subset)
            if row.get(f["id"]) in (None, ""):
                row[f["id"]] = f"{subset}-{n}"
            yield row


def _join(rows: Iterable[Mapping], join: Mapping, source: str) -> Iterator[Mapping]:
    if not join.get("path") or not join.get("key"):
        raise DataError(f"{source}: 'join' needs 'path' and 'key' (the column both files share)")
    on, cols = str(join["key"]), list(join.get("columns") or ["answer"])
    table = {}
    for r in _read_local(str(join["path"])):
        table[str(r.get(on))] = r
    for n, row in enumerate(rows, start=1):
        key = str(row.get(on))
        if key not in table:
            raise DataError(f"{source}: row {n}: field '{on}': {key!r} not found in {join['path']}")
        yield {**row, **{c: table[key].get(c) for c in cols}}


def _matches(value, cond) -> bool:
    if isinstance(cond, Mapping):
        if "pattern" in cond:
            return value is not None and re.fullmatch(str(cond["pattern"]), str(value)) is not None
        raise DataError(f"filter condition {dict(cond)!r}: use a value, a list of values or {{pattern: regex}}")
    if isinstance(cond, (list, tuple)):
        return value in cond or str(value) in [str(c) for c in cond]
    return value == cond or str(value) == str(cond)


def _filter(rows: Iterable[Mapping], conds: Mapping) -> Iterator[Mapping]:
    for row in rows:
        if all(_matches(row.get(col), cond) for col, cond in conds.items()):
            yield row


def _drop_empty(opts):
    def blank(o):
        return o is None or (isinstance(o, str) and not o.strip())

    if isinstance(opts, Mapping):
        keys = choices.ordered_keys(opts)
        while keys and blank(opts[keys[-1]]):
            keys.pop()
        return {k: opts[k] for k in keys}
    if isinstance(opts, (list, tuple)):
        out = list(opts)
        while out and blank(out[-1]):
            out.pop()
        return out
    return opts


def _drop_empty_options(rows: Iterable[Mapping], spec: Mapping) -> Iterator[Mapping]:
    col = _spec_fields(spec)["options"]
    if isinstance(col, (list, tuple)):
        raise DataError(f"{describe(spec)}: drop_empty_options needs one options column, not a list of columns")
    for row in rows:
        yield {**row, col: _drop_empty(row[col])} if col in row else row


_LETTER_PREFIX = r"^\s*\(?([A-Z])\s*[\).．、:：]?\s+|^\s*\(?([A-Z])[\).．、:：]\s*"


@ADAPTERS.register("option_lines")
def adapt_option_lines(rows: Iterable[Mapping], spec: Mapping) -> Iterator[Mapping]:
    """Options held in one string, one per line ("A 选项\\nB 选项", CMExam; "opt\\nopt", Xiezhi), or as a list of
    {"key": "A", "value": ...} objects: turned into a list. With ``answer_text: true`` the answer column holds the
    text of the correct option (Xiezhi) and is turned into its index."""
    f = _spec_fields(spec)
    col, ans = f["options"], f["answer"]
    for row in rows:
        row = dict(row)
        opts = row.get(col)
        if isinstance(opts, str):
            lines = [ln for ln in opts.replace("\r\n", "\n").split("\n") if ln.strip()]
            parsed = [re.match(_LETTER_PREFIX, ln) for ln in lines]
            lettered = bool(lines) and all(
                m and (m.group(1) or m.group(2)) == LETTERS[i] for i, m in enumerate(parsed[: len(LETTERS)])
            )
            if lettered:  # "A 选项": strip the letters (they must run A, B, C, ... to count as letters)
                row[col] = [ln[m.end() :].strip() for ln, m in zip(lines, parsed)]
            else:
                row[col] = [ln.strip() for ln in lines]
        elif isinstance(opts, (list, tuple)) and opts and all(isinstance(o, Mapping) for o in opts):
            keyed = {o.get("key", o.get("label")): o.get("value", o.get("text")) for o in opts}
            row[col] = (
                choices.as_list(keyed)
                if len(keyed) == len(opts)  # by number / letter (kaft/choices.py)
                else [o.get("value", o.get("text")) for o in opts]
            )
        if spec.get("answer_text") and isinstance(row.get(col), list) and row.get(ans) is not None:
            text = str(row[ans]).strip()
            matches = [i for i, o in enumerate(row[col]) if str(o).strip() == text]
            row[ans] = matches[0] if len(matches) == 1 else f"<answer text {text!r} matches {len(matches)} options>"
        yield row


def read_spec_rows(spec: Mapping, kwargs: Mapping, ctx: Mapping) -> Iterator[Mapping]:
    """A spec's raw rows with subsets, data_files, join, filter, adapters and drop_empty_options applied."""
    src = spec.get("source", "local")
    rows = _read_subsets(src, kwargs, spec, ctx) if spec.get("subsets") else _read_source(src, kwargs, spec, ctx)
    if spec.get("join"):
        rows = _join(rows, spec["join"], describe(spec))
    if spec.get("filter"):
        rows = _filter(rows, spec["filter"])
    names = spec.get("adapter") or []
    for name in [names] if isinstance(names, str) else names:
        try:
            adapt = ADAPTERS.get(name)
        except DataError as e:
            raise DataError(f"{describe(spec)}: {e}") from None
        rows = adapt(rows, spec)
    if spec.get("drop_empty_options"):
        rows = _drop_empty_options(rows, spec)
    return rows
