"""Stage 1 — data: load a multiple-choice QA set from any source into one validated schema.

Every loader yields raw rows; :func:`normalize_rows` maps them through the data set config's ``fields`` into
:class:`MCItem` and rejects malformed rows with one error naming source, row and field, before any model
is loaded. Sources are a registry (``local`` files, the Hugging Face ``hub``, the embedded ``testbed``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from kaft.prompts import LETTERS


class DataError(ValueError):
    """A data set row or file that cannot be used; the message says where and what to fix."""


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    options: list[str]
    answer: int
    subject: str | None = None
    domain: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MCItem":
        return cls(id=d["id"], question=d["question"], options=list(d["options"]), answer=int(d["answer"]),
                   subject=d.get("subject"), domain=d.get("domain"), meta=dict(d.get("meta") or {}))


DEFAULT_FIELDS = {"id": "id", "question": "question", "options": "options", "answer": "answer",
                  "subject": "subject", "domain": "domain"}


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
        if isinstance(opts, Mapping):  # {"A": "...", "B": "..."} as in MedQA on the hub
            opts = [opts[k] for k in sorted(opts)]
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


def _answer(value: Any, n: int, base: int, source: str, row: int) -> int:
    """An answer given as an index (``answer_base`` 0 or 1) or as a letter ("B")."""
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n] and not value.strip().isdigit():
        return LETTERS.index(value.strip().upper())
    try:
        idx = int(value) - base
        if isinstance(value, float) and value != int(value):
            raise ValueError
    except (TypeError, ValueError):
        raise _err(source, row, "answer", f"{value!r} is neither an index nor a letter A-{LETTERS[n - 1]}")
    if not 0 <= idx < n:
        raise _err(source, row, "answer", f"index {idx} out of range for {n} options")
    return idx


def normalize_rows(rows: Iterable[Mapping], source: str, fields: Mapping | None = None, answer_base: int = 0,
                   domain: str | None = None, id_prefix: str = "") -> list[MCItem]:
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
        ans = _answer(_get(raw, f["answer"], source, row, "answer"), len(opts), answer_base, source, row)
        subject = raw.get(f["subject"]) if f.get("subject") else None
        dom = raw.get(f["domain"]) if f.get("domain") else None
        meta = raw.get("meta") if isinstance(raw.get("meta"), Mapping) else {}
        items.append(MCItem(id=str(item_id), question=question, options=opts, answer=ans,
                            subject=None if subject in (None, "") else str(subject),
                            domain=str(dom) if dom not in (None, "") else domain, meta=dict(meta)))
    if not items:
        raise DataError(f"{source}: no rows")
    return items


# ----------------------------------------------------------------------------------------------- sources
def _read_local(path: str) -> Iterator[Mapping]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file (check dataset paths; relative paths resolve against the launch dir)")
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            with p.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{p}: row {n}: not valid JSON ({e.msg})") from None
        elif suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8") or "null")
            except json.JSONDecodeError as e:
                raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
            if isinstance(data, Mapping) and "data" in data:
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(f"{p}: expected a JSON list of rows (or {{'data': [...]}})")
            yield from data
        elif suffix == ".csv":
            with p.open(encoding="utf-8", newline="") as fh:
                yield from csv.DictReader(fh)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(p).to_pylist()
        else:
            raise DataError(f"{p}: unsupported file type '{suffix}' (use .json, .jsonl, .csv or .parquet)")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start}); re-encode the file as UTF-8") from None


def _read_hub(path: str, name: str | None = None, split: str = "train", revision: str | None = None,
              **_) -> Iterator[Mapping]:
    """Rows from the Hugging Face hub (or its local cache when HF_DATASETS_OFFLINE=1)."""
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - surface the hub's reason in one line
        raise DataError(f"hub dataset {path!r} (config {name!r}, split {split!r}) could not be loaded: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    yield from ds


def _read_testbed(split: str, testbed: Mapping, cache_dir: str, **_) -> Iterator[Mapping]:
    from kaft.testbed import world as tb_world

    w = tb_world.build_world(testbed)
    yield from (it.to_dict() for it in w.split(split))


SOURCES: dict[str, Callable[..., Iterator[Mapping]]] = {
    "local": lambda path, **_: _read_local(path),
    "hub": _read_hub,
    "testbed": _read_testbed,
}


def describe(spec: Mapping) -> str:
    """A short human name for a data spec, used in error messages."""
    src = spec.get("source", "local")
    if src == "local":
        return str(spec.get("path"))
    if src == "hub":
        return f"hub:{spec.get('path')}[{spec.get('split', 'train')}]"
    return f"{src}:{spec.get('split')}"


def check_spec(spec: Mapping) -> None:
    """Cheap checks done at config time (before any model loads): known source, local file exists."""
    src = spec.get("source", "local")
    if src not in SOURCES:
        raise DataError(f"unknown data source {src!r}; choose one of {sorted(SOURCES)}")
    if src == "local":
        if not spec.get("path"):
            raise DataError("a local data set needs 'path'")
        if not Path(str(spec["path"])).expanduser().exists():
            raise DataError(f"{spec['path']}: no such file (check the dataset config's path)")
    if src == "hub" and not spec.get("path"):
        raise DataError("a hub data set needs 'path' (the hub id, e.g. GBaker/MedQA-USMLE-4-options)")


def load_items(spec: Mapping, domain: str | None = None, **ctx) -> list[MCItem]:
    """Load and validate one data spec (a dataset config's ``train`` or one of its ``eval`` entries)."""
    check_spec(spec)
    src = spec.get("source", "local")
    kwargs = {k: v for k, v in spec.items() if k not in ("source", "fields", "answer_base", "limit", "name_in_results")}
    if src == "hub":
        kwargs["name"] = spec.get("name")
    rows = SOURCES[src](**kwargs, **ctx)
    limit = spec.get("limit")
    if limit:
        rows = (r for i, r in enumerate(rows) if i < int(limit))
    return normalize_rows(rows, describe(spec), spec.get("fields"), int(spec.get("answer_base", 0)),
                          domain=domain, id_prefix=str(spec.get("id_prefix", "")))


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
