"""Full fine-tuning (``train=full``, ``train.finetune: full``): every parameter trains, and the reference model that
DPO and SFT_KL score against is no longer "the adapter disabled".

Why full fine-tuning at all: the seed papers train that way — Ren et al. fine-tune LLaMA-2 7B/13B/70B fully (App.
A.1), SMA runs full-parameter DPO (App. B), EAFT trains every parameter up to Qwen2.5-32B (App. F, Table 4); only
KaFT itself trains LoRA (App. A.2). The loss, the examples and the Trainer are those of LoRA training
(:func:`kaft.train.train_lora`); what differs is here: no adapter is added, the reference is one of

``precomputed`` the reference log-probabilities of every preference pair, computed once by the model before its
                first step (TRL's ``precompute_ref_log_probs``) and carried in the pair rows: 8 bytes per pair.
                Only for losses that train on pairs (``dpo``): they read a reference's *sequence* log-probs.
``copy``        a frozen copy of the model before training (eval mode, no gradient), run beside the policy on
                every batch: one more set of weights (4 bytes per parameter in float32, 2 in bfloat16), no
                gradient, no optimizer state. SFT_KL needs it: its KL is exact over the vocabulary at every label
                position (kaft/losses/kl.py), and precomputing that would store ``label tokens x vocab`` floats
                per item (a 2,048-token response over Qwen's 152k vocabulary: 1.2 GB per item in float32).
``auto``        (the default) precomputed for ``dpo``, copy for ``sft_kl``.

Measured on the testbed model (1,165,952 parameters, 4.45 MiB in float32; AMD EPYC CPU, RSS from /proc/self/statm,
tracemalloc for the Python rows; the script is in docs/multi-gpu.md): the frozen copy adds 6.65 MiB of RSS (its
4.45 MiB of parameters plus allocator slack); the precomputed reference of 1,600 pairs (200 items x 8 pairs) is 12.8
KB as the collator's float32 tensors, 545 KiB of Python floats in the rows. Full fine-tuning itself already holds
weights + gradients + Adam's two moments (16 bytes per parameter in float32), so a copy adds a quarter to that, and
at 32B parameters in bfloat16 it is 61 GiB more per replica; the precomputed reference adds nothing measurable and
costs one forward pass over the pairs before training. Hence ``auto``: the cheapest reference each loss can use
exactly (precomputed for DPO; SFT_KL cannot use it).

A fully fine-tuned model is saved as a model (``save_pretrained`` + its tokenizer) in the train cache entry, not
as an adapter; :func:`load_tuned` loads it for an evaluation that is not cached.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from kaft.train.config import TrainError, reference_kind
from kaft.train.examples import PairCollator
from kaft.train.steps import accepts_logits_to_keep, pair_logps

log = logging.getLogger(__name__)


def prepare(model, train_cfg: Mapping, seed: int):
    """The model itself, every parameter trainable (a model loaded for inference may have some frozen)."""
    from transformers import set_seed  # lazy: transformers imports torch; needed only to build or load a model

    set_seed(seed)  # as LoRA seeds before its adapter: dropout and data order start from the same state
    for p in model.parameters():
        p.requires_grad_(True)
    if train_cfg.get("gradient_checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False  # the KV cache is useless while training and conflicts with checkpointing
    return model


def frozen_copy(model):
    """A frozen copy of ``model`` as it is now (the reference policy of ``train.reference=copy``)."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def precompute_pair_reference(model, rows: Sequence[dict], pad_id: int, batch_size: int) -> int:
    """Write each pair row's reference log-probs (``ref_chosen``, ``ref_rejected``: sums over the answer tokens,
    :func:`kaft.train.steps.pair_logps`) into the row, computed by ``model`` in eval mode without gradient, in
    batches of ``batch_size`` pairs as training batches them. Returns the bytes the reference takes (8 per pair)."""
    collate = PairCollator(pad_id)
    slice_logits = accepts_logits_to_keep(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            chosen, rejected = pair_logps(model, batch, slice_logits)
            for row, c, r in zip(chunk, chosen.float().tolist(), rejected.float().tolist()):
                row["ref_chosen"], row["ref_rejected"] = c, r
    model.train(was_training)
    return 8 * len(rows)  # two float32 per pair as the collator stacks them


def reference_for(loss, train_cfg: Mapping, model, rows: list[dict], pad_id: int):
    """The frozen reference model for the Trainer (``copy``), or None: the loss reads none, or its rows now carry
    precomputed reference log-probs (``precomputed``)."""
    kind = reference_kind(train_cfg, loss.needs)
    if kind is None:
        return None
    if kind == "precomputed":
        nbytes = precompute_pair_reference(model, rows, pad_id, int(train_cfg["batch_size"]))
        log.info("full fine-tuning: reference log-probs of %d pairs precomputed (%d bytes)", len(rows), nbytes)
        return None
    ref = frozen_copy(model)
    log.info(
        "full fine-tuning: frozen reference copy (%.1f MB)",
        sum(p.numel() * p.element_size() for p in ref.parameters()) / 2**20,
    )
    return ref


def tuned_pair(model, model_cfg: Mapping, model_dir: str | Path, device: str | None):
    """``(model, tokenizer)`` to evaluate: the model trained in this process with the tokenizer saved beside it, or
    (``model`` None: it came from the cache) both loaded from ``model_dir``. The base model is never loaded."""
    if model is None:
        return load_tuned(model_cfg, model_dir, device)
    from transformers import AutoTokenizer  # lazy: transformers imports torch

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # as kaft.modeling loads every tokenizer: probing and evaluation generate
    return model, tok


def load_tuned(model_cfg: Mapping, model_dir: str | Path, device: str | None):
    """``(model, tokenizer)`` of a fully fine-tuned model saved in the train cache (``model_dir``), loaded as
    :func:`kaft.modeling.load` loads the base model (its dtype, left padding); the base model is not loaded."""
    from kaft import modeling

    if not (Path(model_dir) / "config.json").is_file():
        raise TrainError(f"{model_dir} holds no fully fine-tuned model (no config.json); remove it and re-run")
    cfg = {k: v for k, v in dict(model_cfg).items() if k != "revision"}  # a local directory has no revisions
    return modeling.load(cfg, str(model_dir), device)
