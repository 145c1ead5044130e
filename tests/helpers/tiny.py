"""The tiny world of the tests, built in-process (nothing downloaded): a word-level tokenizer, a random 2-layer
Llama, a dozen multiple-choice rows, and the files and overrides of a whole tiny CLI job."""

from __future__ import annotations

from kaft.prompts import LETTERS

WORDS = (
    "For the following general geography question , select one correct answer from A to D . "
    "Question : Options : Answer : What is the capital of ? red green blue yellow cat dog fox owl "
    "Zorvia Melk Tarn Quill Brisk"
).split()


SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: what make_model's pad / bos / eos ids assume


def make_tokenizer(texts=WORDS, *, keep_space: bool = False, add_bos: bool = False):
    """The one tiny tokenizer of the tests: word-level, fast, over the pieces of ``texts`` (nothing downloaded).

    ``keep_space``: pieces keep their leading space (" A" != "A", as lm-eval's continuations need);
    ``add_bos``: every encoding starts with <s>, as Llama's tokenizer does."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = (
        pre_tokenizers.Split(Regex(r" ?[A-Za-z0-9]+| ?[^\sA-Za-z0-9]|\s"), behavior="isolated")
        if keep_space
        else pre_tokenizers.Whitespace()
    )
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for text in [*LETTERS, *texts]:
        for piece, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_model(vocab_size: int, seed: int = 0, **config):
    """The one tiny random Llama of the tests (2 layers, width 64); ``config`` overrides LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        **{
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            **config,
        }
    )
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
    return [
        {
            "id": f"q{i}",
            "question": f"What is the capital of Zorvia {i} ?",
            "options": colors if i % 2 else animals,
            "answer": i % 4,
        }
        for i in range(n)
    ]


def write_tiny_job(root, n_train: int = 12, n_test: int = 6, test_format: str | None = "jsonl"):
    """The setup of every CLI test: a saved tiny model (``root/model``), ``n_train`` training rows
    (``root/train.jsonl``) and ``n_test`` test rows (``root/test.jsonl`` or ``root/test.csv``; None: no test file)."""
    import json

    save_tiny_model(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_train_rows(n_train)))
    colors = ["red", "green", "blue", "yellow"]
    if test_format == "jsonl":
        (root / "test.jsonl").write_text(
            "".join(
                json.dumps({"question": f"What is Tarn {i} ?", "options": colors, "answer": i % 4}) + "\n"
                for i in range(n_test)
            )
        )
    elif test_format == "csv":  # options as a JSON cell, the answer as a letter
        cell = json.dumps(colors).replace('"', '""')
        (root / "test.csv").write_text(
            "question,options,answer\n"
            + "".join(f'"What is Tarn {i} ?","{cell}",{"ABCD"[i % 4]}\n' for i in range(n_test))
        )
    return root


def tiny_job_args(root, test_file: str = "test.jsonl") -> list[str]:
    """The overrides that run the job of :func:`write_tiny_job`'s ``root`` on its own model and data, at the tiny
    settings of ``conf/experiment/tiny.yaml`` (defined there once; a test appends what it changes)."""
    return [
        "model=local",
        f"model.path={root / 'model'}",
        "dataset=local",
        f"dataset.train.path={root / 'train.jsonl'}",
        f"dataset.eval.test.path={root / test_file}",
        "experiment=tiny",
    ]
