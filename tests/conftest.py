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


SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: what make_model's pad / bos / eos ids assume


def make_tokenizer(texts=WORDS, *, keep_space: bool = False, add_bos: bool = False):
    """The one tiny tokenizer of the tests: word-level, fast, over the pieces of ``texts`` (nothing downloaded).

    ``keep_space``: pieces keep their leading space (" A" != "A", as lm-eval's continuations need);
    ``add_bos``: every encoding starts with <s>, as Llama's tokenizer does."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = (pre_tokenizers.Split(Regex(r" ?[A-Za-z0-9]+| ?[^\sA-Za-z0-9]|\s"), behavior="isolated") if keep_space
           else pre_tokenizers.Whitespace())
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for text in [*LETTERS, *texts]:
        for piece, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def make_model(vocab_size: int, seed: int = 0, **config):
    """The one tiny random Llama of the tests (2 layers, width 64); ``config`` overrides LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                         "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                         **config})
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


def write_tiny_job(root, n_train: int = 12, n_test: int = 6, test_format: str | None = "jsonl"):
    """The setup of every CLI test: a saved tiny model (``root/model``), ``n_train`` training rows
    (``root/train.jsonl``) and ``n_test`` test rows (``root/test.jsonl`` or ``root/test.csv``; None: no test file)."""
    import json

    save_tiny_model(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_train_rows(n_train)))
    colors = ["red", "green", "blue", "yellow"]
    if test_format == "jsonl":
        (root / "test.jsonl").write_text("".join(json.dumps({"question": f"What is Tarn {i} ?", "options": colors,
                                                             "answer": i % 4}) + "\n" for i in range(n_test)))
    elif test_format == "csv":  # options as a JSON cell, the answer as a letter
        cell = json.dumps(colors).replace('"', '""')
        (root / "test.csv").write_text("question,options,answer\n" + "".join(
            f"\"What is Tarn {i} ?\",\"{cell}\",{'ABCD'[i % 4]}\n" for i in range(n_test)))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core box they only contend (``usefixtures`` it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


def small_disk(path, size: str):
    """A real filesystem of ``size`` (e.g. "64k") mounted at ``path`` for a full-disk test: a context manager
    yielding the mount point, unmounted afterwards; the test is skipped where mounting is not permitted (not root)."""
    import contextlib
    import subprocess

    @contextlib.contextmanager
    def mounted():
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); the raised-error cases still run")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)

    return mounted()
