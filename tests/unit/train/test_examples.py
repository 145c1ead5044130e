"""kaft.train.examples: how an item becomes a training row (prompt masked, BOS, left truncation) and a batch."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.train import ITEMS

from kaft import train
from kaft.prompts import DEFAULT_INSTRUCTION, format_question

pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- examples
def test_encode_example_masks_prompt_and_adds_bos(tok):
    it = ITEMS[1]
    prompt = format_question(it.question, it.options, "general", DEFAULT_INSTRUCTION)
    ids, labels = train.encode_example(tok, prompt, " B", 256)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    b_id = tok.convert_tokens_to_ids("B")
    assert ids == [tok.bos_token_id] + p_ids + [b_id]
    assert labels == [-100] * (1 + len(p_ids)) + [b_id]
    assert tok.unk_token_id not in ids  # the test vocab covers the prompt


def test_encode_example_truncates_prompt_from_the_left(tok):
    prompt = format_question(ITEMS[0].question, ITEMS[0].options)
    full, _ = train.encode_example(tok, prompt, " A", 256)
    ids, labels = train.encode_example(tok, prompt, " A", 10)
    assert len(ids) == 10
    assert ids[0] == tok.bos_token_id and ids[1:] == full[len(full) - 9 :]
    assert labels[-1] == ids[-1] and set(labels[:-1]) == {-100}
    with pytest.raises(ValueError, match="max_length=2"):
        train.encode_example(tok, prompt, " A", 2)


def test_special_prefix_none_when_tokenizer_adds_nothing(tok):
    bare = copy.deepcopy(tok)
    from tokenizers import processors

    bare.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    assert train.special_prefix(tok) == [tok.bos_token_id]
    assert train.special_prefix(bare) == []


def test_collator_pads_right_and_stacks_weights():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, -100, 7], "weights": 0.1},
        {"input_ids": [5, 8], "labels": [-100, 8], "weights": 1.0},
    ]
    b = train.WeightedCollator(pad_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7], [-100, 8, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert torch.allclose(b["weights"], torch.tensor([0.1, 1.0]))
