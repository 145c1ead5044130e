"""How each kind of loss is fed: its examples, its collator and its :class:`transformers.Trainer` subclass.

:data:`FEEDS` is keyed by what a loss declares it ``needs`` ("weights": SFT batches with per-sample rewards;
"pairs": preference pairs), so :func:`kaft.train.train_lora` picks the feed from the declaration and never names a
loss. Each Trainer takes ``reference_model=``: under full fine-tuning the frozen copy of :mod:`kaft.train.full`
(None: LoRA's adapter-disabled base, or precomputed reference log-probs in the batch). The Trainer classes are
built on first use: importing kaft.train must not import transformers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

from kaft.data import MCItem
from kaft.losses import Loss, make_loss
from kaft.registry import Registry
from kaft.train.examples import (
    PairCollator,
    WeightedCollator,
    build_examples,
    build_pair_examples,
    mean_label_tokens,
)
from kaft.train.self_answers import self_answer_rows
from kaft.train.steps import accepts_logits_to_keep, pair_batch_loss, sft_batch_loss


def _on_device(model, device):
    """Full fine-tuning's frozen reference copy on the policy's device (the Trainer moves only the policy)."""
    return None if model is None else model.to(device)


@cache
def weighted_trainer_class() -> type:
    from transformers import Trainer  # lazy: transformers imports torch; needed only to build or load a model

    class WeightedLossTrainer(Trainer):
        """A Trainer whose loss is :func:`kaft.losses.compute_loss` on the batch's ``weights``.

        The loss is a per-micro-batch mean, so the Trainer divides it by the gradient-accumulation steps. When the
        model supports ``logits_to_keep`` only the logits of positions that predict a label token are computed.
        """

        loss_is_scaled_for_ga = False

        def __init__(self, *args, loss_cfg: Mapping, reference_model=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_cfg = loss_cfg
            self._slice_logits = accepts_logits_to_keep(self.model)
            self.reference_model = _on_device(reference_model, self.args.device)

        #: a loss that ``needs = "reference"`` (SFT_KL) also reads the adapter-disabled base model's logits
        with_reference = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ref_model = self.reference_model  # full fine-tuning's frozen copy (kaft.train.full), else None
            reference = self.accelerator.unwrap_model(model) if self.with_reference and ref_model is None else None
            loss, outputs = sft_batch_loss(model, inputs, self.loss_cfg, self._slice_logits, reference, ref_model)
            return (loss, outputs) if return_outputs else loss

    return WeightedLossTrainer


@cache
def reference_trainer_class() -> type:
    """The weighted trainer with a reference forward per batch (SFT_KL): the base model is the LoRA-wrapped policy
    with its adapter disabled, so no second set of weights is held (:func:`kaft.train.steps.sft_batch_loss`)."""
    return type("ReferenceLossTrainer", (weighted_trainer_class(),), {"with_reference": True})


@cache
def pair_trainer_class() -> type:
    from transformers import Trainer  # lazy: transformers imports torch; needed only to build or load a model

    class PairLossTrainer(Trainer):
        """A Trainer whose loss is the preference loss's ``pair_loss`` on :class:`PairCollator` batches (a
        per-micro-batch mean over pairs). The running reward margin / accuracy are logged with the loss."""

        loss_is_scaled_for_ga = False

        def __init__(self, *args, loss_cfg: Mapping, reference_model=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.reference_model = _on_device(reference_model, self.args.device)
            self.pair_loss = make_loss(loss_cfg).pair_loss
            self._slice_logits = accepts_logits_to_keep(self.model)
            self._stats: list[dict] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            peft_model = None if self.reference_model is not None else self.accelerator.unwrap_model(model)
            loss, stats = pair_batch_loss(
                model, inputs, self.pair_loss, self._slice_logits, peft_model=peft_model, ref_model=self.reference_model
            )
            self._stats.append(stats)
            return (loss, None) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if self._stats and "loss" in logs:
                for key in self._stats[0]:
                    logs[key] = float(sum(s[key] for s in self._stats) / len(self._stats))
                self._stats = []
            super().log(logs, *args, **kwargs)

    return PairLossTrainer


@dataclass
class Prepared:
    """A loss's training examples, the files that document them, and what the training log adds about them."""

    rows: list[dict]
    unit: str  # what one row is, for the log line ("items", "pairs")
    files: dict[str, str] = field(default_factory=dict)  # file name in the adapter dir -> its text
    log: dict = field(default_factory=dict)  # extra entries of train_log.json


@dataclass(frozen=True)
class Feed:
    """How :func:`kaft.train.train_lora` trains a loss that needs one kind of input."""

    #: (loss, tokenizer, items, weights, records, seed, domain, instruction, max_length, target) -> Prepared, with
    #: ``target`` the resolved ``train.target`` (:func:`kaft.targets.resolve`), ``eos`` ``train.response_eos``
    prepare: Callable[..., Prepared]
    collator: Callable[[int], Callable]  # pad id -> collator
    trainer: Callable[[], type]  # -> the Trainer subclass (takes ``loss_cfg=``)


def _weighted_examples(
    loss: Loss,
    tokenizer,
    items: Sequence[MCItem],
    weights: Sequence[float],
    records,
    seed: int,
    domain: str,
    instruction: str | None,
    max_length: int,
    target: str = "letter",
    eos: bool = False,
) -> Prepared:
    rows = build_examples(tokenizer, items, weights, domain, instruction, max_length, target, eos)
    return Prepared(rows, "items", log={"target": target, "mean_label_tokens": mean_label_tokens(rows)})


def _pair_examples(
    loss: Loss,
    tokenizer,
    items: Sequence[MCItem],
    weights: Sequence[float],
    records,
    seed: int,
    domain: str,
    instruction: str | None,
    max_length: int,
    target: str = "letter",
    eos: bool = False,
) -> Prepared:
    pairs = loss.make_pairs(items, records, seed, domain, instruction)
    rows = build_pair_examples(tokenizer, pairs, weights, max_length)
    return Prepared(
        rows,
        "pairs",
        files={"pairs.jsonl": "".join(json.dumps(p) + "\n" for p in pairs)},
        log={
            "n_pairs": len(pairs),
            "n_items_with_pairs": len({p["index"] for p in pairs}),
            "target": target,
            "mean_label_tokens": mean_label_tokens(rows, "chosen_labels"),  # of the chosen responses
        },
    )


def _self_answer_examples(
    loss: Loss, tokenizer, items, weights, records, seed, domain, instruction, max_length, target="letter", eos=False
) -> Prepared:
    """SMA's "SFT self": the model's own correct answers are the targets (``train.target`` is not read: the answers
    are whole responses on free-form data, letters on multiple-choice data)."""
    rows, text = self_answer_rows(loss, tokenizer, items, weights, records, seed, domain, instruction, max_length)
    log = {"n_self_answers": len(rows), "target": "self answers", "mean_label_tokens": mean_label_tokens(rows)}
    return Prepared(rows, "self answers", files={"self_answers.jsonl": text}, log=log)


#: a loss's ``needs`` -> its :class:`Feed`
FEEDS: Registry[Feed] = Registry("training input")
FEEDS.register("weights", Feed(_weighted_examples, WeightedCollator, weighted_trainer_class))
FEEDS.register("reference", Feed(_weighted_examples, WeightedCollator, reference_trainer_class))  # SFT_KL
FEEDS.register("self_answers", Feed(_self_answer_examples, WeightedCollator, weighted_trainer_class))  # sft_self
FEEDS.register("pairs", Feed(_pair_examples, PairCollator, pair_trainer_class))
