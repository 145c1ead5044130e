"""The training tests' tokenizer, built once per module."""

import pytest
from helpers.train import make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()
