"""Training a loss that needs the reference model's logits too (``needs = "reference"``: SFT_KL).

Why the adapter-disabled forward and not a frozen copy: the reference is the base model, which the LoRA-wrapped
policy already holds — disabling the adapter gives its logits without a second set of weights in memory, as DPO's
reference is computed (:func:`kaft.train.steps.pair_batch_loss`). The reference forward runs without gradient and
keeps only the label positions' logits when the model takes ``logits_to_keep``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import torch

from kaft.losses import IGNORE_INDEX, compute_loss
from kaft.train.steps import accepts_logits_to_keep


def reference_batch_loss(model, inputs: Mapping, loss_cfg: Mapping, slice_logits: bool, peft_model=None):
    """``(loss, outputs)`` of one SFT batch scored with the policy's and the reference's logits (the reference: the
    peft model ``peft_model or model`` with its adapter disabled, no gradient)."""
    labels, weights = inputs["labels"], inputs["weights"]
    fwd = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if slice_logits:  # position t predicts labels[:, t + 1]: keep the union over the batch of positions that do
        pos = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero(as_tuple=True)[0]
        fwd["logits_to_keep"] = pos
        labels = labels[:, pos + 1]
    outputs = model(**fwd)
    with torch.no_grad(), (peft_model or model).disable_adapter():
        ref_logits = model(**fwd).logits
    loss = compute_loss(loss_cfg, outputs.logits, labels, weights, labels_shifted=slice_logits, ref_logits=ref_logits)
    return loss, outputs


@cache
def reference_trainer_class() -> type:
    from transformers import Trainer  # lazy: transformers imports torch; needed only to build or load a model

    class ReferenceLossTrainer(Trainer):
        """A Trainer whose loss is :func:`kaft.losses.compute_loss` with the reference model's logits (a
        per-micro-batch mean, like the weighted trainer's)."""

        loss_is_scaled_for_ga = False

        def __init__(self, *args, loss_cfg: Mapping, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_cfg = loss_cfg
            self._slice_logits = accepts_logits_to_keep(self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = reference_batch_loss(
                model, inputs, self.loss_cfg, self._slice_logits, peft_model=self.accelerator.unwrap_model(model)
            )
            return (loss, outputs) if return_outputs else loss

    return ReferenceLossTrainer
