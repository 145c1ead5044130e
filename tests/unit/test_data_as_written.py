"""Data read as written (issue 19, item 4): each case loads a small file from tests/fixtures/data through the same
path a job uses (:func:`kaft.data.load_items`, :func:`kaft.detection.convert.load_freeform`) and checks the item
that comes out -- which option text the answer points at, not only its index."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaft import choices
from kaft.data import DataError, load_items
from kaft.detection.convert import load_freeform

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def _load(name: str, **spec):
    return load_items({"source": "local", "path": str(FIXTURES / name), **spec})


def _gold(item) -> str:
    return item.options[item.answer]


def test_numeric_keys_keep_numeric_order():
    first, reversed_keys = _load("options_numeric_keys.jsonl", answer_base=1)
    assert first.options == [f"option {i}" for i in range(1, 11)]  # text order would give 1, 10, 2, ...
    assert _gold(first) == "option 3"
    assert reversed_keys.options == first.options and _gold(reversed_keys) == "option 10"  # written 10..1


def test_letter_keys_keep_letter_order_and_letter_answers():
    c, b = _load("options_letter_keys.json")
    assert c.options == ["alpha", "beta", "gamma", "delta"] and _gold(c) == "gamma"
    assert b.options == ["alpha", "beta"] and _gold(b) == "beta"  # lower-case keys: letter order too


def test_other_keys_keep_the_written_order():
    (item,) = _load("options_named_keys.jsonl")
    assert item.options == ["first written", "second written", "third written"] and _gold(item) == "second written"
    assert choices.ordered_keys({"zeta": 1, "alpha": 2}) == ["zeta", "alpha"]
    assert choices.ordered_keys({3: "c", 1: "a", 2: "b"}) == [1, 2, 3]  # integer keys (e.g. from Parquet / YAML)


@pytest.mark.parametrize(
    "name, ids", [("bom_id_first.csv", ["b1", "b2"]), ("bom_question_first.csv", ["0"]), ("bom.jsonl", ["j1"])]
)
def test_a_byte_order_mark_is_not_part_of_the_first_column(name, ids):
    assert (FIXTURES / name).read_bytes().startswith(b"\xef\xbb\xbf")
    items = _load(name)
    assert [it.id for it in items] == ids  # with the mark in the header the ids became "0", "1", ...
    assert items[0].question == "What is red?" and _gold(items[0]) == "red"
    if name == "bom_id_first.csv":
        assert _gold(items[1]) == "green"  # the letter "B"


def test_a_boolean_answer_is_an_error_not_an_index():
    with pytest.raises(
        DataError,
        match=r"row 2: field 'answer': true is not an answer: give the correct option's "
        r"index \(answer_base 0\) or its letter A-B",
    ):
        _load("answer_true.jsonl")


def test_an_answer_given_as_option_text_says_what_to_write():
    with pytest.raises(DataError, match=r"'green' is the text of option B; write its letter 'B' or its index 1"):
        _load("answer_option_text.jsonl")
    with pytest.raises(DataError, match=r"its index 2 \(answer_base 1\)"):
        _load("answer_option_text.jsonl", answer_base=1)


def test_answer_base():
    (item,) = _load("answer_one_based.jsonl", answer_base=1)
    assert _gold(item) == "third"
    with pytest.raises(DataError, match="index 3 out of range for 3 options"):
        _load("answer_one_based.jsonl")  # 0-based by default
    for bad in ("abc", 2, True, "1.5"):
        with pytest.raises(DataError, match=rf"answer_base={bad!r}: must be 0 or 1"):
            _load("answer_one_based.jsonl", answer_base=bad)
    assert _gold(_load("answer_one_based.jsonl", answer_base="1")[0]) == "third"  # a CLI override's string


def test_a_folder_is_not_a_data_file(tmp_path):
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(DataError, match="x.jsonl is a folder, not a data file"):
        load_items({"source": "local", "path": str(tmp_path / "x.jsonl")})


def test_freeform_keyed_options_and_boolean_answer(tmp_path):
    spec = {"source": "local", "path": str(FIXTURES / "freeform_keyed_options.jsonl"), "limit": 1}
    (item,) = load_freeform(spec)
    assert item.answer == "ten"  # index 9 in numeric order ("9", "nine", in text order)
    with pytest.raises(DataError, match="row 2: field 'answer': false is not an answer"):
        load_freeform({**spec, "limit": None})
