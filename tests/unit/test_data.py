"""Stage 1: loaders and validation. Every malformed row fails with one error naming file, row and field."""

import csv
import json

import pytest

from kaft.data import DataError, MCItem, fingerprint, load_items, normalize_rows, read_jsonl, write_jsonl

ROWS = [
    {"id": "a", "question": "Q1?", "options": ["x", "y", "z", "w"], "answer": 2, "subject": "anatomy"},
    {"id": "b", "question": "Q2?", "options": ["x", "y"], "answer": 0},
]


def _write(tmp_path, name, rows):
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".json"):
        p.write_text(json.dumps(rows))
    elif name.endswith(".csv"):
        with p.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "question", "options", "answer"])
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(r[k]) if k == "options" else r[k] for k in w.fieldnames})
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.Table.from_pylist([{k: r[k] for k in ("id", "question", "options", "answer")} for r in rows]), p
        )
    return p


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.parquet"])
def test_local_formats_load_the_same_items(tmp_path, name):
    items = load_items({"source": "local", "path": str(_write(tmp_path, name, ROWS))}, domain="medical")
    assert [it.id for it in items] == ["a", "b"]
    assert items[0].options == ["x", "y", "z", "w"] and items[0].answer == 2
    assert items[1].answer == 0 and items[1].domain == "medical"


def test_letter_answers_dict_options_and_one_based_indices():
    rows = [{"question": "Q", "options": {"B": "y", "A": "x", "C": "z"}, "answer_idx": "C"}]
    items = normalize_rows(rows, "hub:x", fields={"answer": "answer_idx"})
    assert items[0].options == ["x", "y", "z"] and items[0].answer == 2 and items[0].id == "0"
    rows = [{"question": "Q", "opa": "x", "opb": "y", "cop": 2}]
    items = normalize_rows(rows, "s", fields={"options": ["opa", "opb"], "answer": "cop"}, answer_base=1)
    assert items[0].options == ["x", "y"] and items[0].answer == 1


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"id": "a", "options": ["x", "y"], "answer": 0}, "question", "missing"),
        ({"id": "a", "question": "Q", "answer": 0}, "options", "missing"),
        ({"id": "a", "question": "Q", "options": ["x", "y"]}, "answer", "missing"),
        ({"id": "a", "question": "Q", "options": ["x", "y"], "answer": 2}, "answer", "out of range"),
        ({"id": "a", "question": "Q", "options": ["x", "y"], "answer": -1}, "answer", "out of range"),
        ({"id": "a", "question": "Q", "options": ["x"], "answer": 0}, "options", "at least 2"),
        ({"id": "a", "question": "Q", "options": ["x", ""], "answer": 0}, "options", "empty"),
        ({"id": "a", "question": "Q", "options": ["x", "y"], "answer": "maybe"}, "answer", "neither"),
    ],
)
def test_malformed_rows_name_source_row_and_field(row, field, words):
    good = {"id": "g", "question": "Q", "options": ["x", "y"], "answer": 1}
    with pytest.raises(DataError) as e:
        normalize_rows([good, row], "train.jsonl")
    msg = str(e.value)
    assert msg.startswith("train.jsonl: row 2: field '%s'" % field) and words in msg and "\n" not in msg


def test_duplicate_ids_are_rejected():
    with pytest.raises(DataError, match=r"row 2: field 'id': duplicate id 'a' \(first seen in row 1\)"):
        normalize_rows([ROWS[0], ROWS[0]], "f")


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_items({"source": "local", "path": str(tmp_path / "nope.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: not valid JSON"):
        load_items({"source": "local", "path": str(bad)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_items({"source": "local", "path": str(empty)})
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_items({"source": "local", "path": str(latin)})
    txt = tmp_path / "d.txt"
    txt.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_items({"source": "local", "path": str(txt)})
    with pytest.raises(DataError, match="unknown data source"):
        load_items({"source": "ftp", "path": "x"})


def test_hub_loader_is_real_code_reading_a_local_dataset_dir(tmp_path):
    """The hub loader calls datasets.load_dataset; a local directory stands in for a hub id (offline here)."""
    d = tmp_path / "medqa_like"
    d.mkdir()
    rows = [
        {
            "question": "Q%d" % i,
            "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
            "answer_idx": "ABCD"[i % 4],
            "meta_info": "step1",
        }
        for i in range(5)
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items({"source": "hub", "path": str(d), "split": "train", "fields": {"answer": "answer_idx"}})
    assert [it.answer for it in items] == [0, 1, 2, 3, 0]
    with pytest.raises(DataError, match="could not be loaded"):
        load_items({"source": "hub", "path": str(tmp_path / "missing_ds"), "split": "train"})


def test_fingerprint_and_jsonl_round_trip(tmp_path):
    items = normalize_rows(ROWS, "x")
    write_jsonl(items, tmp_path / "n.jsonl")
    again = read_jsonl(tmp_path / "n.jsonl")
    assert again == items and fingerprint(again) == fingerprint(items)
    changed = [items[0], MCItem(**{**items[1].to_dict(), "answer": 1})]
    assert fingerprint(changed) != fingerprint(items)


def test_a_registered_source_gets_its_spec_keys_and_the_job_context(tmp_path):
    """Sources are a registry: a plugin's reader receives the spec's keys plus ``cache_dir`` and the whole job
    ``config``, and the loaders know nothing of what it reads."""
    from kaft import data
    from kaft.errors import KaftError

    seen = []

    def reader(split, config, cache_dir, **_):
        seen.append((split, config, cache_dir))
        yield from config["rows"][split]

    data.SOURCES.register("in_config", reader)
    try:
        items = load_items(
            {"source": "in_config", "split": "dev", "limit": 1},
            domain="d",
            cache_dir=str(tmp_path),
            config={"rows": {"dev": ROWS}},
        )
    finally:
        data.SOURCES.unregister("in_config")
    assert [it.id for it in items] == ["a"] and items[0].domain == "d"
    assert seen == [("dev", {"rows": {"dev": ROWS}}, str(tmp_path))]
    assert issubclass(DataError, KaftError)
    with pytest.raises(DataError, match=r"unknown adapter 'nope'; choose one of \['halueval', 'option_lines'\]"):
        load_items({"source": "local", "path": str(_write(tmp_path, "d.jsonl", ROWS)), "adapter": "nope"})


def test_model_sources_are_a_registry():
    from kaft import modeling
    from kaft.errors import KaftError

    calls = []

    def fake(cfg, root, config, build=True):
        calls.append((cfg, root, config, build))
        return ("p" if build else ""), "id"

    modeling.SOURCES.register("fake", fake)
    try:
        assert modeling.resolve({"source": "fake"}, "root", {"seed": 1}) == ("p", "id")
        assert modeling.resolve({"source": "fake"}, "root", {"seed": 1}, build=False) == ("", "id")  # kaft.sweep.plan
    finally:
        modeling.SOURCES.unregister("fake")
    assert calls == [({"source": "fake"}, "root", {"seed": 1}, True), ({"source": "fake"}, "root", {"seed": 1}, False)]
    assert issubclass(modeling.ModelError, KaftError)
    with pytest.raises(modeling.ModelError, match=r"unknown model source 'fake'; choose one of \[.*'hub', 'local'"):
        modeling.check_model_cfg({"source": "fake"})


def test_a_response_key_on_a_local_spec_is_an_error_not_ignored(tmp_path):
    """Only the testbed source builds responses (``response: sentence``); on a local file the key would be
    silently dropped, so it is one DataError line pointing to ``fields.response``."""
    from kaft.data import check_spec

    path = tmp_path / "train.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=r"'response' \('sentence'\) is read only by the testbed source") as e:
        check_spec({"source": "local", "path": str(path), "response": "sentence"})
    assert "\n" not in str(e.value) and "fields: {response: <column>}" in str(e.value)
    check_spec({"source": "local", "path": str(path)})
