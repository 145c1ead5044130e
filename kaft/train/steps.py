"""The loss of one training batch: SFT batches through :func:`kaft.losses.compute_loss`, pair batches through the
loss's own ``pair_loss`` against the reference policy.

Why only the label positions' logits: a causal LM's ``[B, T, V]`` logits dwarf everything else a step holds, and
the loss reads one row per label token; when the model takes ``logits_to_keep`` only the rows that predict a label
token are computed (the union over the batch of such positions).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial

import torch

from kaft.losses import IGNORE_INDEX, compute_loss, dpo_pair_loss, sequence_logps


def accepts_logits_to_keep(model) -> bool:
    """Whether the (peft-wrapped) model's forward takes ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def sft_batch_loss(model, inputs: Mapping, loss_cfg: Mapping, slice_logits: bool, reference=None, ref_model=None):
    """``(loss, outputs)`` of one SFT batch (``input_ids``, ``attention_mask``, ``labels``, ``weights``).

    With ``slice_logits`` (the model takes ``logits_to_keep``) only the logits of positions that predict a label
    token are computed: the union over the batch of such positions. ``reference``: the peft model whose
    adapter-disabled forward, without gradient and on the same positions, gives the reference logits a loss that
    ``needs = "reference"`` reads (SFT_KL) — the base model without a second copy of its weights, as DPO's reference
    is computed (:func:`pair_batch_loss`). ``ref_model``: under full fine-tuning, the frozen copy that gives them
    instead (:mod:`kaft.train.full`).
    """
    labels, weights = inputs["labels"], inputs["weights"]
    fwd = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if slice_logits:
        # position t predicts labels[:, t + 1]: keep the union over the batch of positions that do
        pos = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero(as_tuple=True)[0]
        fwd["logits_to_keep"] = pos
        labels = labels[:, pos + 1]
    outputs = model(**fwd)
    ref = {}
    if ref_model is not None:
        with torch.no_grad():
            ref["ref_logits"] = ref_model(**fwd).logits
    elif reference is not None:
        with torch.no_grad(), reference.disable_adapter():
            ref["ref_logits"] = model(**fwd).logits
    return compute_loss(loss_cfg, outputs.logits, labels, weights, labels_shifted=slice_logits, **ref), outputs


def pair_logps(model, inputs: Mapping, slice_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``([P], [P])``: the summed log-probs of each pair's chosen and rejected answer under ``model``."""
    c_lab, r_lab = inputs["chosen_labels"], inputs["rejected_labels"]
    fwd = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if slice_logits:
        pos = ((c_lab[:, 1:] != IGNORE_INDEX) | (r_lab[:, 1:] != IGNORE_INDEX)).any(dim=0).nonzero(as_tuple=True)[0]
        logits = model(**fwd, logits_to_keep=pos).logits
        c_lab, r_lab = c_lab[:, pos + 1], r_lab[:, pos + 1]
    else:
        logits = model(**fwd).logits
    return (
        sequence_logps(logits, c_lab, inputs["chosen_row"], labels_shifted=slice_logits),
        sequence_logps(logits, r_lab, inputs["rejected_row"], labels_shifted=slice_logits),
    )


def pair_batch_loss(
    model, inputs: Mapping, pair_loss: Callable, slice_logits: bool, peft_model=None, ref_model=None
) -> tuple[torch.Tensor, dict]:
    """``(loss, stats)`` of one batch of :class:`~kaft.train.examples.PairCollator` pairs under ``pair_loss``
    (a preference loss's ``pair_loss(pc, pr, rc, rr, weights) -> (loss, margin)``).

    ``model`` is a peft model (or a wrapper of one: then pass the unwrapped ``peft_model``): the reference
    log-probabilities come from it with the adapter disabled, without gradient. ``stats`` holds the mean implicit
    reward margin and the fraction of pairs ranked right (detached 0-d tensors: reading them is left to logging, so
    there is no device sync per step). Under full fine-tuning (:mod:`kaft.train.full`) the reference is the batch's
    precomputed ``ref_chosen`` / ``ref_rejected``, or the frozen copy ``ref_model``.
    """
    policy_c, policy_r = pair_logps(model, inputs, slice_logits)
    if "ref_chosen" in inputs:  # precomputed before training
        ref_c, ref_r = inputs["ref_chosen"].to(policy_c), inputs["ref_rejected"].to(policy_r)
    elif ref_model is not None:
        with torch.no_grad():
            ref_c, ref_r = pair_logps(ref_model, inputs, slice_logits)
    else:
        with torch.no_grad(), (peft_model or model).disable_adapter():
            ref_c, ref_r = pair_logps(model, inputs, slice_logits)
    n_chosen = (inputs["chosen_labels"] != IGNORE_INDEX).sum(-1)  # SFT + DPO's per-token mean (sft_weight)
    loss, margin = pair_loss(policy_c, policy_r, ref_c, ref_r, inputs["weights"], chosen_tokens=n_chosen)
    return loss, {"reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean()}


def dpo_batch_loss(
    model, inputs: Mapping, beta: float, slice_logits: bool, peft_model=None
) -> tuple[torch.Tensor, dict]:
    """:func:`pair_batch_loss` under :func:`kaft.losses.dpo_loss` with strength ``beta``."""
    return pair_batch_loss(model, inputs, partial(dpo_pair_loss, beta=beta), slice_logits, peft_model)
