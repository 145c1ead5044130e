"""Options and answers read as the user wrote them: the one place that decides an option's letter and an answer's index.

Options may come as a list (kept in its order) or as an object keyed per option. An object's order is:

- numeric keys ("1".."10", or 0-based "0".."9", or integers): by number, so "10" follows "9" (text order would put
  it after "1" and every ``answer`` after it would point at another option);
- single-letter keys ("A".."J", any case): by letter;
- any other keys: the order they were written in (a JSON object's own order).

An answer is an option index (``answer_base`` 0 or 1 says which number is the first option; with numeric keys
"1".."N" that is ``answer_base: 1``), or a letter ("B", any case; the base does not apply). ``true`` / ``false`` are
refused: Python counts them as 1 / 0, and a data set that stores a boolean there means something other than an
option index. An answer that is an option's text is refused with the index and letter to write instead, so that
nothing is guessed. Errors are ValueError with the message kaft/data.py puts after "source: row n: field ...".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaft.prompts import LETTERS

ORDER_RULE = (
    "an options object is ordered by number for numeric keys, by letter for single-letter keys, else as written"
)


def _number(key) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    text = str(key).strip()
    return int(text) if text.isdigit() else None


def ordered_keys(opts: Mapping) -> list:
    """The keys of an options object in option order (see the module docstring)."""
    keys = list(opts)
    numbers = [_number(k) for k in keys]
    if keys and all(n is not None for n in numbers):
        return [k for _, k in sorted(zip(numbers, keys), key=lambda p: p[0])]
    if keys and all(isinstance(k, str) and len(k.strip()) == 1 and k.strip().upper() in LETTERS for k in keys):
        return sorted(keys, key=lambda k: k.strip().upper())
    return keys


def as_list(opts: Mapping) -> list:
    """An options object's values in option order."""
    return [opts[k] for k in ordered_keys(opts)]


def parse_base(value: Any, where: str) -> int:
    """``answer_base`` as 0 or 1; anything else is a ValueError naming ``where`` and the fix."""
    if not isinstance(value, bool) and str(value).strip() in ("0", "1"):
        return int(str(value).strip())
    raise ValueError(f"{where}={value!r}: must be 0 or 1 (the number the answer column gives the first option)")


def answer_index(value: Any, options: list[str], base: int) -> int:
    """The 0-based index of ``value`` among ``options`` (see the module docstring)."""
    n = len(options)
    if isinstance(value, bool):
        raise ValueError(
            f"{str(value).lower()} is not an answer: give the correct option's index (answer_base "
            f"{base}) or its letter A-{LETTERS[n - 1]}"
        )
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n] and not value.strip().isdigit():
        return LETTERS.index(value.strip().upper())
    try:
        idx = int(value) - base
        if isinstance(value, float) and value != int(value):
            raise ValueError
    except (TypeError, ValueError):
        same = [i for i, o in enumerate(options) if str(value).strip() == str(o).strip()]
        if isinstance(value, str) and len(same) == 1:
            raise ValueError(
                f"{value!r} is the text of option {LETTERS[same[0]]}; write its letter "
                f"{LETTERS[same[0]]!r} or its index {same[0] + base} (answer_base {base})"
            ) from None
        raise ValueError(f"{value!r} is neither an index nor a letter A-{LETTERS[n - 1]}") from None
    if not 0 <= idx < n:
        raise ValueError(f"index {idx} out of range for {n} options")
    return idx
