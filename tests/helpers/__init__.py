"""Test helpers (not tests): factories for the tiny tokenizer, model, data and job (:mod:`helpers.tiny`) and the
offline real tokenizers (:mod:`helpers.real_tokenizers`, imported by name: it skips without mistral-common) and
the loss tests' inputs (:mod:`helpers.losses`). ``tests/`` is on ``sys.path`` (pytest puts the rootdir conftest's
folder there), so tests ``from helpers import ...`` whether run as ``python -m pytest`` or ``pytest tests/unit/...``."""

from helpers.disk import small_disk
from helpers.tiny import (
    SPECIALS,
    WORDS,
    make_model,
    make_tokenizer,
    save_tiny_model,
    tiny_job_args,
    tiny_train_rows,
    write_tiny_job,
)

__all__ = [
    "small_disk",
    "SPECIALS",
    "WORDS",
    "make_model",
    "make_tokenizer",
    "save_tiny_model",
    "tiny_job_args",
    "tiny_train_rows",
    "write_tiny_job",
]
