""":func:`train_lora`: wrap a causal LM in a peft LoRA adapter (or, ``train.finetune: full``, train all of it:
:mod:`kaft.train.full`) and train it with the feed its loss needs.

**Checkpoints and resume.** With a ``checkpoint_dir`` (the train stage in kaft/stages.py passes the train key's
scratch dir in the cache, ``<cache>/train/.partial-<key>/``, removed once the adapter is in the cache) the Trainer
saves a checkpoint every ``train.save_steps`` optimizer steps (adapter as safetensors, optimizer, scheduler, RNG
states, trainer state; ``train.save_total_limit`` kept), and a restarted run — killed, preempted, requeued — resumes
from the newest complete one: the Trainer restores the RNG states and skips the batches already seen in the current
epoch, so the final adapter equals an uninterrupted run's (tests/unit/train/test_lora.py).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from kaft import targets
from kaft.data import MCItem
from kaft.losses import make_loss
from kaft.train import full as full_ft
from kaft.train.config import (
    CHECKPOINT_DEFAULTS,
    TrainError,
    TrainSpec,
    is_full,
    lora_config,
    peft_wrap,
    validate_train_cfg,
)
from kaft.train.examples import ListDataset
from kaft.train.trainers import FEEDS, Prepared

log = logging.getLogger(__name__)


def last_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The newest *complete* ``checkpoint-<step>`` under ``checkpoint_dir`` (None if there is none).

    The Trainer writes ``trainer_state.json`` last, after the adapter, optimizer, scheduler and RNG states, so a
    checkpoint without it was cut off mid-save (by a kill or a requeue) and is skipped (and removed)."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for p in Path(checkpoint_dir).glob("checkpoint-*"):
        step = p.name.split("-", 1)[1]
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    for step, p in sorted(found, reverse=True):
        if (p / "trainer_state.json").exists() and any(p.glob("*.safetensors")):
            return p
        log.warning("ignoring incomplete checkpoint %s (cut off while it was saved)", p)
        shutil.rmtree(p, ignore_errors=True)
    return None


def _check_inputs(model, items: Sequence[MCItem], weights: Sequence[float]) -> None:
    from peft import PeftModel  # lazy: peft imports torch; needed only to make or load an adapter

    if len(items) != len(weights):
        raise TrainError(f"train_lora: {len(items)} items but {len(weights)} weights")
    if not items:
        raise TrainError("train_lora: no training items")
    bad = [i for i, w in enumerate(weights) if not (math.isfinite(float(w)) and float(w) >= 0.0)]
    if bad:
        raise TrainError(f"train_lora: weights must be finite and >= 0; item {bad[0]} has {weights[bad[0]]!r}")
    if isinstance(model, PeftModel):
        raise TrainError("train_lora: the model already carries a peft adapter; pass the base model")


def _add_adapter(model, train_cfg: Mapping, seed: int):
    # lazy: peft imports torch; needed only to make or load an adapter
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(seed)  # LoRA's A matrices are initialised randomly
    if train_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    with peft_wrap():
        return get_peft_model(model, lora_config(train_cfg["lora"]))


def _training_args(train_cfg: Mapping, out_dir: Path, checkpoint_dir: str | Path | None, seed: int):
    """The Trainer's arguments, and whether checkpoints are saved (into ``checkpoint_dir``)."""
    from transformers import TrainingArguments  # lazy: transformers imports torch; needed only to build or load a model

    use_cuda = torch.cuda.is_available()
    save_steps = int(train_cfg.get("save_steps", CHECKPOINT_DEFAULTS["save_steps"]))
    checkpointing = checkpoint_dir is not None and save_steps > 0
    if checkpointing:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(checkpoint_dir if checkpointing else out_dir),
        per_device_train_batch_size=int(train_cfg["batch_size"]),
        gradient_accumulation_steps=int(train_cfg["grad_accum"]),
        learning_rate=float(train_cfg["lr"]),
        warmup_steps=float(train_cfg["warmup_ratio"]),  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=float(train_cfg["epochs"]),
        weight_decay=float(train_cfg["weight_decay"]),
        lr_scheduler_type=str(train_cfg["lr_scheduler"]),
        logging_steps=int(train_cfg["logging_steps"]),
        save_strategy="steps" if checkpointing else "no",
        save_steps=save_steps if checkpointing else 500,
        save_total_limit=int(train_cfg.get("save_total_limit", CHECKPOINT_DEFAULTS["save_total_limit"])),
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=bool(use_cuda and torch.cuda.is_bf16_supported()),
        use_cpu=not use_cuda,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        log_level="warning",
    )
    return args, checkpointing


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0  # masked out anyway


def _run(trainer, checkpoint_dir: str | Path | None, checkpointing: bool):
    """``(TrainOutput, the step resumed from or None)``: train, from the newest complete checkpoint if any."""
    resume = last_checkpoint(checkpoint_dir) if checkpointing else None
    resumed_from = None
    if resume is not None:
        resumed_from = int(json.loads((resume / "trainer_state.json").read_text()).get("global_step", 0))
        log.info("resuming training from checkpoint %s (step %d)", resume, resumed_from)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return result, resumed_from


def _finish(trainer, result, resumed_from: int | None, prepared: Prepared, out_dir: Path, tokenizer=None):
    """Save the adapter (or, with a ``tokenizer``, the fully fine-tuned model and it) and ``train_log.json``;
    return the trained model in eval mode."""
    model = trainer.model
    model.eval()
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:  # full fine-tuning: the saved model loads on its own (kaft.train.full.load_tuned)
        tokenizer.save_pretrained(str(out_dir))
    history = [dict(h) for h in trainer.state.log_history]
    summary = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "log_history": history,
        "resumed_from_step": resumed_from,
        **prepared.log,
    }
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=1, default=float))
    log.info(
        "trained %d %s for %d steps, final train loss %.4f; %s in %s",
        len(prepared.rows),
        prepared.unit,
        result.global_step,
        result.training_loss,
        "model" if tokenizer is not None else "adapter",
        out_dir,
    )
    return model


def train_lora(
    model,
    tokenizer,
    items: Sequence[MCItem],
    weights: Sequence[float],
    spec: TrainSpec,
    out_dir: str | Path,
    *,
    records: Sequence[dict] | None = None,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence | None = None,
):
    """Fine-tune ``model`` with LoRA on ``items`` weighted by ``weights``, as ``spec`` says; return the peft model
    (in memory, in eval mode) after saving its adapter to ``out_dir``. With ``train.finetune: full`` every
    parameter of ``model`` trains instead (in place) and the model and tokenizer are saved (:mod:`kaft.train.full`).

    ``weights[i]`` is item i's reward from :func:`kaft.losses.sample_weights`. ``spec.train`` holds
    :data:`~kaft.train.config.TRAIN_KEYS` (``lora`` = ``{r, lora_alpha, dropout, target_modules}``); optional
    ``gradient_checkpointing``. ``records`` hold sampled answers of ``items`` (same order): SMA's own samples or the
    detection's; a loss that needs pairs (``dpo``) builds its pairs from them and needs them; then
    ``train.batch_size`` counts pairs, the pairs go to ``out_dir/pairs.jsonl`` and their counts to
    ``train_log.json``. Other losses ignore ``records``. ``spec.train["target"]`` (``train.target``, default auto)
    says what each item trains on (:mod:`kaft.targets`); ``train_log.json`` records the resolved ``target`` and the
    ``mean_label_tokens`` per example (results.json's ``train_target``).

    ``checkpoint_dir``: where Trainer checkpoints go every ``train.save_steps`` steps (default 50; 0 = none),
    keeping ``train.save_total_limit`` (default 1); training resumes from the newest complete one found there
    (``train_log.json`` then records ``resumed_from_step``). ``callbacks``: extra ``TrainerCallback``s.
    """
    train_cfg, seed = spec.train, spec.seed
    validate_train_cfg(train_cfg)
    _check_inputs(model, items, weights)
    loss = make_loss(spec.loss)
    feed = FEEDS.get(loss.needs)
    target = {"target": targets.resolve(train_cfg.get("target"), items), "eos": bool(train_cfg.get("response_eos"))}
    max_length = int(train_cfg["max_length"])
    prepared = feed.prepare(
        loss, tokenizer, items, weights, records, seed, spec.domain, spec.instruction, max_length, **target
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in prepared.files.items():
        (out_dir / name).write_text(text)
    full = is_full(train_cfg)
    model = full_ft.prepare(model, train_cfg, seed) if full else _add_adapter(model, train_cfg, seed)
    reference = full_ft.reference_for(loss, train_cfg, model, prepared.rows, _pad_id(tokenizer)) if full else None
    args, checkpointing = _training_args(train_cfg, out_dir, checkpoint_dir, seed)
    trainer = feed.trainer()(
        model=model,
        args=args,
        train_dataset=ListDataset(prepared.rows),
        data_collator=feed.collator(_pad_id(tokenizer)),
        loss_cfg=spec.loss,
        reference_model=reference,
        callbacks=list(callbacks or []) or None,
    )
    result, resumed_from = _run(trainer, checkpoint_dir, checkpointing)
    return _finish(trainer, result, resumed_from, prepared, out_dir, tokenizer if full else None)
