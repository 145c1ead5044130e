"""Shared test setup: everything offline, a tiny word-level tokenizer and a tiny random Llama built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from kaft.prompts import LETTERS

WORDS = ("For the following general geography question , select one correct answer from A to D . "
         "Question : Options : Answer : What is the capital of ? red green blue yellow cat dog fox owl "
         "Zorvia Melk Tarn Quill Brisk").split()


def make_tokenizer():
    """A word-level fast tokenizer over a small vocabulary (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in list(LETTERS) + WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    return tok


def make_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def save_tiny_model(path, seed: int = 0):
    """Save a tiny random Llama and its tokenizer to ``path`` (what ``model=local model.path=...`` loads)."""
    tok = make_tokenizer()
    make_model(len(tok), seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_train_rows(n: int = 12) -> list[dict]:
    """``n`` valid multiple-choice rows over the tiny tokenizer's words (colours and animals alternate)."""
    colors, animals = ["red", "green", "blue", "yellow"], ["cat", "dog", "fox", "owl"]
    return [{"id": f"q{i}", "question": f"What is the capital of Zorvia {i} ?",
             "options": colors if i % 2 else animals, "answer": i % 4} for i in range(n)]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return make_model(len(tiny_tokenizer))


@pytest.fixture()
def mc_items():
    from kaft.data import MCItem

    colors = ["red", "green", "blue", "yellow"]
    animals = ["cat", "dog", "fox", "owl"]
    items = []
    for i in range(8):
        opts = colors if i % 2 == 0 else animals
        items.append(MCItem(id=f"q{i}", question=f"What is the capital of Zorvia {i} ?", options=list(opts),
                            answer=i % 4, domain="geography"))
    return items
