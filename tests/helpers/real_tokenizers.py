"""Real tokenizers, offline: the files that ``mistral-common`` ships in its package data, as HF fast tokenizers.

* ``spm`` — ``tokenizer.model.v1``: Mistral 7B's SentencePiece model (32k, the Llama 2 family: "▁A", byte fallback
  "<0x41>", BOS added, no pad token — as the hub's Mistral-7B-v0.1 tokenizer);
* ``bpe_bos`` — ``tekken_240718.json``: tiktoken-style byte-level BPE (131k, "ĠA") with a BOS post-processor and no
  pad token (the Llama 3 convention);
* ``bpe`` — the same BPE without BOS, pad = EOS (the Qwen2 convention).

Each is saved with ``save_pretrained`` and reloaded through :func:`kaft.modeling.load` beside a tiny random model
of the matching architecture (``MODELS``), so tests see what a hub checkpoint gives kaft.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("mistral_common")

#: tokenizer kind -> the architecture it is paired with in the tests
MODELS = {"spm": "MistralForCausalLM", "bpe_bos": "LlamaForCausalLM", "bpe": "Qwen2ForCausalLM"}


def data_dir() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


@functools.cache
def make_real_tokenizer(kind: str):
    """The HF fast tokenizer of ``kind`` (module docstring), built from package data, no network; cached, so
    tests take the reloaded copy of :func:`save_pair`'s directory to change it."""
    if kind == "spm":
        from transformers import LlamaTokenizerFast

        with tempfile.TemporaryDirectory() as tmp:  # transformers converts a file named tokenizer.model
            shutil.copy(data_dir() / "tokenizer.model.v1", Path(tmp) / "tokenizer.model")
            return LlamaTokenizerFast.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if kind not in ("bpe", "bpe_bos"):
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    specials = {"bos_token": "<s>"} if kind == "bpe_bos" else {"pad_token": "</s>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=_tekken(), eos_token="</s>", unk_token="<unk>", **specials)
    if kind == "bpe_bos":  # the backend is a copy: the cached one keeps no BOS
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return tok


@functools.cache
def _tekken():
    """``tekken_240718.json`` as a ``tokenizers`` byte-level BPE (transformers' converter: ranks -> merges)."""
    from transformers.integrations.mistral.tokenizer import MistralConverter

    return MistralConverter(str(data_dir() / "tekken_240718.json")).converted()


def make_real_model(kind: str, vocab_size: int, seed: int = 0, letter_ids=None):
    """A tiny random model of ``MODELS[kind]`` over the real vocabulary. With ``letter_ids`` (token id -> logit
    boost) every position's hidden state gets a constant direction that those lm_head rows read, so the model
    answers with those tokens at any prompt: parsable answers without pretraining."""
    import torch
    import transformers

    arch = MODELS[kind]
    cfg_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    torch.manual_seed(seed)
    cfg = cfg_cls(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = getattr(transformers, arch)(cfg).eval()
    if letter_ids:
        with torch.no_grad():
            emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
            emb[:, 0] = 1.0  # dominates the residual stream: after the final RMSNorm h[0] ≈ sqrt(d)
            head[:, 0] = 0.0
            scale = cfg.hidden_size**0.5
            for tid, boost in letter_ids.items():
                head[tid, 0] = boost / scale
    return model


def save_pair(kind: str, path: Path, **model_kw) -> Path:
    """Save ``kind``'s tokenizer and tiny model to ``path`` (a ``model=local`` directory)."""
    tok = make_real_tokenizer(kind)
    make_real_model(kind, len(tok), **model_kw).save_pretrained(path)
    tok.save_pretrained(path)
    return path
