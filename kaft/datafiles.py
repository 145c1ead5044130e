"""Reading one local data file (.jsonl, .json, .csv, .parquet) into raw rows, as its author wrote it.

Text files are read as UTF-8 with an optional byte-order mark (``utf-8-sig``): Excel and Windows tools write one,
and read as plain UTF-8 it becomes part of the first column's name, so that column is silently lost (or "missing
column 'question'" although it is visibly there). A folder, a non-UTF-8 file, a broken CSV or Parquet file is one
:class:`DataError` line naming the file and the fix. kaft/data.py registers :func:`read_local` as the ``local``
source and maps the rows into items.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from kaft.errors import KaftError


class DataError(KaftError):
    """A data set row or file that cannot be used; the message says where and what to fix."""


def read_local(path: str, **_) -> Iterator[Mapping]:
    """The raw rows of one local file, lazily (rows are validated as they come, so an error names its row)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file (check dataset paths; relative paths resolve against the launch dir)")
    suffix = p.suffix.lower()
    if p.is_dir() and suffix != ".parquet":  # a folder of Parquet files is one table; nothing else is
        raise DataError(folder_message(p))
    try:
        if suffix == ".jsonl":
            with p.open(encoding="utf-8-sig") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{p}: row {n}: not valid JSON ({e.msg})") from None
        elif suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8-sig") or "null")
            except json.JSONDecodeError as e:
                raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
            if isinstance(data, Mapping) and "data" in data:
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(f"{p}: expected a JSON list of rows (or {{'data': [...]}})")
            yield from data
        elif suffix == ".csv":
            with p.open(encoding="utf-8-sig", newline="") as fh:  # -sig: a byte-order mark is not in a header
                try:
                    yield from csv.DictReader(fh)
                except csv.Error as e:
                    raise DataError(f"{p}: not a readable CSV file ({e}); save it as CSV (UTF-8)") from None
        elif suffix == ".parquet":
            yield from _read_parquet(p)
        else:
            raise DataError(f"{p}: unsupported file type '{suffix}' (use .json, .jsonl, .csv or .parquet)")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start}); re-encode the file as UTF-8") from None


def folder_message(p) -> str:
    """The one line for a folder given as a data file (also checked at config time, kaft/data.py)."""
    return (
        f"{p} is a folder, not a data file; point the path at a .jsonl, .json, .csv or .parquet file (a folder "
        f"of <subset> files needs 'subsets: [...]')"
    )


def _read_parquet(p: Path) -> Iterator[Mapping]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({str(e).splitlines()[0]}); write it again") from None
    yield from table.to_pylist()
