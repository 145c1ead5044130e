"""Stage 4 — LoRA fine-tuning with per-sample rewards (KaFT), per-token weights (EAFT, DFT) or preference pairs (DPO).

:func:`train_lora` wraps a causal LM in a peft LoRA adapter and trains it with a :class:`transformers.Trainer`
whose ``compute_loss`` calls :func:`sft_batch_loss` (-> :func:`kaft.losses.compute_loss`) or, for a pairwise loss,
:func:`dpo_batch_loss`. Each item becomes one example: the prompt of :func:`kaft.prompts.format_question` followed
by the target :func:`kaft.prompts.answer_text` (``" A"``), with the loss on the target tokens only.
:func:`encode_example` is that tokenisation, public so that scoring code can use the very same token split.

DPO pairs (:func:`kaft.pairs.build_pairs`) are encoded the same way. The reference policy is the same peft model
with its adapter disabled (no second copy of the weights). When chosen and rejected differ only in their last
token — one-letter answers after the same prompt — both are read from one sequence's logits (the causal logits that
score the last token do not see it), so such a pair costs one sequence, not two.

**Checkpoints and resume.** With a ``checkpoint_dir`` (kaft.run passes the train key's scratch dir in the cache,
``<cache>/train/.partial-<key>/``, removed once the adapter is in the cache) the Trainer saves a checkpoint every
``train.save_steps`` optimizer steps (adapter as safetensors, optimizer, scheduler, RNG states, trainer state;
``train.save_total_limit`` kept), and a restarted run — killed, preempted, requeued — resumes from the newest
complete one: the Trainer restores the RNG states and skips the batches already seen in the current epoch, so the
final adapter equals an uninterrupted run's (tests/test_train.py). ``train.save_steps`` and
``train.save_total_limit`` are not part of the train cache key: they do not change the result.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kaft import losses
from kaft.data import MCItem
from kaft.pairs import build_pairs, has_samples
from kaft.prompts import DEFAULT_INSTRUCTION, answer_text, format_question

log = logging.getLogger(__name__)

IGNORE_INDEX = losses.IGNORE_INDEX
TRAIN_KEYS = ("batch_size", "lr", "warmup_ratio", "epochs", "max_length", "weight_decay", "grad_accum",
              "lr_scheduler", "logging_steps", "lora")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
# optional train settings that only decide how often progress is saved, not the adapter (left out of cache keys)
CHECKPOINT_KEYS = ("save_steps", "save_total_limit")


# ----------------------------------------------------------------------------------------------- tokenising
def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts *before* the text by default (``[bos]`` for Llama-style tokenizers, ``[]`` for
    Qwen/GPT-2 style ones). A trailing EOS some tokenizers append is not part of it."""
    probe = "Answer:"
    plain = _ids(tokenizer, probe, False)
    full = _ids(tokenizer, probe, True)
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i]
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None and full[:1] == [bos] else []


def encode_example(tokenizer, prompt: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for ``prompt + target`` with the loss on the target tokens only.

    ``input_ids = special_prefix + ids(prompt) + ids(target)``; the target ids are those of ``prompt + target``
    after the prompt's (how lm-eval splits context and continuation), which equals ``ids(target)`` on its own for
    byte-level BPE tokenizers and avoids the spurious leading "▁" of SentencePiece ones. When the joint tokenisation
    does not start with the prompt's ids, ``ids(target)`` is used. Over ``max_length`` the prompt is cut from the
    left (the special prefix and the target are kept).
    """
    prefix = special_prefix(tokenizer)
    p_ids = _ids(tokenizer, prompt, False)
    joint = _ids(tokenizer, prompt + target, False)
    t_ids = joint[len(p_ids):] if joint[:len(p_ids)] == p_ids and len(joint) > len(p_ids) else \
        _ids(tokenizer, target, False)
    if not t_ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    room = max_length - len(prefix) - len(t_ids)
    if room < 1:
        raise ValueError(f"train.max_length={max_length} leaves no room for the prompt (special prefix "
                         f"{len(prefix)} + target {len(t_ids)} tokens); raise train.max_length")
    if len(p_ids) > room:
        p_ids = p_ids[len(p_ids) - room:]
    input_ids = prefix + p_ids + t_ids
    labels = [IGNORE_INDEX] * (len(prefix) + len(p_ids)) + t_ids
    return input_ids, labels


def build_examples(tokenizer, items: Sequence[MCItem], weights: Sequence[float], domain: str,
                   instruction: str | None, max_length: int) -> list[dict]:
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    out = []
    for it, w in zip(items, weights):
        prompt = format_question(it.question, it.options, it.domain or domain, instruction)
        ids, labels = encode_example(tokenizer, prompt, answer_text(it.answer), max_length)
        out.append({"input_ids": ids, "labels": labels, "weights": float(w)})
    return out


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class WeightedCollator:
    """Right-pads ``input_ids`` (with ``pad_id``) and ``labels`` (with -100), builds the attention mask and stacks
    the per-sample ``weights``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            m = len(r["input_ids"])
            ids[i, :m] = torch.tensor(r["input_ids"], dtype=torch.long)
            labels[i, :m] = torch.tensor(r["labels"], dtype=torch.long)
            mask[i, :m] = 1
        weights = torch.tensor([float(r["weights"]) for r in rows], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def build_pair_examples(tokenizer, pairs: Sequence[Mapping], weights: Sequence[float],
                        max_length: int) -> list[dict]:
    """Tokenised DPO pairs: ``prompt + chosen`` and ``prompt + rejected`` (:func:`encode_example`), weighted by
    ``weights[pair["index"]]`` (the pair's item reward)."""
    rows = []
    for p in pairs:
        c_ids, c_lab = encode_example(tokenizer, p["prompt"], p["chosen"], max_length)
        r_ids, r_lab = encode_example(tokenizer, p["prompt"], p["rejected"], max_length)
        rows.append({"chosen_ids": c_ids, "chosen_labels": c_lab, "rejected_ids": r_ids, "rejected_labels": r_lab,
                     "weights": float(weights[p["index"]])})
    return rows


def _shares_sequence(r: Mapping) -> bool:
    """Chosen and rejected differ only in the last token (labels before it equal): one sequence scores both."""
    c, rj = r["chosen_ids"], r["rejected_ids"]
    return len(c) == len(rj) and c[:-1] == rj[:-1] and r["chosen_labels"][:-1] == r["rejected_labels"][:-1]


class PairCollator:
    """Packs DPO pairs into one right-padded batch of sequences.

    Returns ``input_ids`` / ``attention_mask`` [M, T], ``chosen_labels`` / ``rejected_labels`` [P, T] aligned with
    sequence rows ``chosen_row`` / ``rejected_row`` [P], and ``weights`` [P]. A pair whose answers differ only in the
    last token takes one row (M < 2P) unless ``share=False``.
    """

    def __init__(self, pad_id: int, share: bool = True):
        self.pad_id, self.share = pad_id, share

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs: list[list[int]] = []
        c_row, r_row, c_lab, r_lab = [], [], [], []
        for r in rows:
            c_row.append(len(seqs))
            seqs.append(r["chosen_ids"])
            if self.share and _shares_sequence(r):
                r_row.append(c_row[-1])  # its labels score the chosen row's logits: only the last label differs
            else:
                r_row.append(len(seqs))
                seqs.append(r["rejected_ids"])
            r_lab.append(r["rejected_labels"])
            c_lab.append(r["chosen_labels"])
        n = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, x in enumerate(seqs):
            ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1

        def pad(labels: list[list[int]]) -> torch.Tensor:
            out = torch.full((len(labels), n), IGNORE_INDEX, dtype=torch.long)
            for i, lab in enumerate(labels):
                out[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
            return out

        return {"input_ids": ids, "attention_mask": mask, "chosen_labels": pad(c_lab), "rejected_labels": pad(r_lab),
                "chosen_row": torch.tensor(c_row), "rejected_row": torch.tensor(r_row),
                "weights": torch.tensor([float(r["weights"]) for r in rows], dtype=torch.float32)}


# ----------------------------------------------------------------------------------------------- trainer
def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def sft_batch_loss(model, inputs: Mapping, loss_cfg: Mapping, slice_logits: bool):
    """``(loss, outputs)`` of one SFT batch (``input_ids``, ``attention_mask``, ``labels``, ``weights``).

    With ``slice_logits`` (the model takes ``logits_to_keep``) only the logits of positions that predict a label
    token are computed: the union over the batch of such positions.
    """
    labels, weights = inputs["labels"], inputs["weights"]
    fwd = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if slice_logits:
        # position t predicts labels[:, t + 1]: keep the union over the batch of positions that do
        pos = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero(as_tuple=True)[0]
        outputs = model(**fwd, logits_to_keep=pos)
        return losses.compute_loss(loss_cfg, outputs.logits, labels[:, pos + 1], weights, labels_shifted=True), outputs
    outputs = model(**fwd)
    return losses.compute_loss(loss_cfg, outputs.logits, labels, weights), outputs


def _pair_logps(model, inputs: Mapping, slice_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    c_lab, r_lab = inputs["chosen_labels"], inputs["rejected_labels"]
    fwd = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if slice_logits:
        pos = ((c_lab[:, 1:] != IGNORE_INDEX) | (r_lab[:, 1:] != IGNORE_INDEX)).any(dim=0).nonzero(as_tuple=True)[0]
        logits = model(**fwd, logits_to_keep=pos).logits
        c_lab, r_lab = c_lab[:, pos + 1], r_lab[:, pos + 1]
    else:
        logits = model(**fwd).logits
    return (losses.sequence_logps(logits, c_lab, inputs["chosen_row"], labels_shifted=slice_logits),
            losses.sequence_logps(logits, r_lab, inputs["rejected_row"], labels_shifted=slice_logits))


def dpo_batch_loss(model, inputs: Mapping, beta: float, slice_logits: bool,
                   peft_model=None) -> tuple[torch.Tensor, dict]:
    """``(loss, stats)`` of one batch of :class:`PairCollator` pairs under :func:`kaft.losses.dpo_loss`.

    ``model`` is a peft model (or a wrapper of one: then pass the unwrapped ``peft_model``): the reference
    log-probabilities come from it with the adapter disabled, without gradient. ``stats`` holds the mean implicit
    reward margin and the fraction of pairs ranked right (detached 0-d tensors: reading them is left to logging, so
    there is no device sync per step).
    """
    policy_c, policy_r = _pair_logps(model, inputs, slice_logits)
    with torch.no_grad(), (peft_model or model).disable_adapter():
        ref_c, ref_r = _pair_logps(model, inputs, slice_logits)
    loss = losses.dpo_loss(policy_c, policy_r, ref_c, ref_r, beta, inputs["weights"])
    with torch.no_grad():
        margin = beta * ((policy_c - ref_c) - (policy_r - ref_r))
    return loss, {"reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean()}


def _make_trainer_class():
    from transformers import Trainer

    class WeightedLossTrainer(Trainer):
        """A Trainer whose loss is :func:`kaft.losses.compute_loss` on the batch's ``weights``.

        The loss is a per-micro-batch mean, so the Trainer divides it by the gradient-accumulation steps. When the
        model supports ``logits_to_keep`` only the logits of positions that predict a label token are computed.
        """

        loss_is_scaled_for_ga = False

        def __init__(self, *args, loss_cfg: Mapping, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_cfg = loss_cfg
            self._slice_logits = _accepts_logits_to_keep(self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = sft_batch_loss(model, inputs, self.loss_cfg, self._slice_logits)
            return (loss, outputs) if return_outputs else loss

    return WeightedLossTrainer


def _make_pair_trainer_class():
    from transformers import Trainer

    class PairLossTrainer(Trainer):
        """A Trainer whose loss is :func:`dpo_batch_loss` on :class:`PairCollator` batches (a per-micro-batch mean
        over pairs). The running reward margin / accuracy are logged with the loss."""

        loss_is_scaled_for_ga = False

        def __init__(self, *args, loss_cfg: Mapping, **kwargs):
            super().__init__(*args, **kwargs)
            self.dpo_beta = losses.DPO.settings(loss_cfg)["beta"]
            self._slice_logits = _accepts_logits_to_keep(self.model)
            self._stats: list[dict] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, stats = dpo_batch_loss(model, inputs, self.dpo_beta, self._slice_logits,
                                         peft_model=self.accelerator.unwrap_model(model))
            self._stats.append(stats)
            return (loss, None) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if self._stats and "loss" in logs:
                for key in self._stats[0]:
                    logs[key] = float(sum(s[key] for s in self._stats) / len(self._stats))
                self._stats = []
            super().log(logs, *args, **kwargs)

    return PairLossTrainer


def validate_train_cfg(train_cfg: Mapping) -> None:
    """Raise ``ValueError`` (one actionable line) for an impossible training config; call before models load."""
    missing = [k for k in TRAIN_KEYS if k not in train_cfg]
    if missing:
        raise ValueError(f"train config is missing {missing}")
    for key in ("batch_size", "epochs", "max_length", "grad_accum", "logging_steps"):
        v = train_cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {v!r}")
    for key, lo, hi in (("lr", 0.0, None), ("warmup_ratio", 0.0, 1.0), ("weight_decay", 0.0, None)):
        v = train_cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or \
                (hi is not None and v >= hi):
            rng = f"[{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
            raise ValueError(f"train.{key} must be a number in {rng}, got {v!r}")
    for key, lo in (("save_steps", 0), ("save_total_limit", 1)):
        v = train_cfg.get(key, lo if key == "save_total_limit" else 50)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"train.{key} must be an integer >= {lo}, got {v!r}"
                             + (" (0 turns checkpoints off)" if key == "save_steps" else ""))
    if train_cfg["lr_scheduler"] not in LR_SCHEDULERS:
        raise ValueError(f"train.lr_scheduler must be one of {list(LR_SCHEDULERS)}, got {train_cfg['lr_scheduler']!r}")
    lora = train_cfg["lora"]
    for key in ("r", "alpha", "dropout", "target_modules"):
        if key not in lora:
            raise ValueError(f"train.lora is missing '{key}'")
    if isinstance(lora["r"], bool) or not isinstance(lora["r"], int) or lora["r"] < 1:
        raise ValueError(f"train.lora.r must be a positive integer, got {lora['r']!r}")
    if not 0.0 <= float(lora["dropout"]) < 1.0:
        raise ValueError(f"train.lora.dropout must be in [0, 1), got {lora['dropout']!r}")


def _lora_config(lora: Mapping):
    from peft import LoraConfig

    targets = lora["target_modules"]
    targets = targets if isinstance(targets, str) else list(targets)  # "all-linear" or a list of module names
    return LoraConfig(task_type="CAUSAL_LM", r=int(lora["r"]), lora_alpha=float(lora["alpha"]),
                      lora_dropout=float(lora["dropout"]), target_modules=targets, bias="none")


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


def train_lora(model, tokenizer, items: Sequence[MCItem], weights: Sequence[float], loss_cfg: Mapping,
               train_cfg: Mapping, out_dir: str | Path, seed: int, domain: str,
               instruction: str | None = None, records: Sequence[dict] | None = None,
               checkpoint_dir: str | Path | None = None, callbacks: Sequence | None = None):
    """Fine-tune ``model`` with LoRA on ``items`` weighted by ``weights``; return the peft model (in memory, in
    eval mode) after saving its adapter to ``out_dir``.

    ``weights[i]`` is item i's reward from :func:`kaft.losses.sample_weights`. ``train_cfg`` holds
    :data:`TRAIN_KEYS` (``lora`` = ``{r, alpha, dropout, target_modules}``); optional ``gradient_checkpointing``.
    ``records`` hold sampled answers of ``items`` (same order): SMA's own samples or the detection's; a pairwise
    loss (:func:`kaft.losses.is_pairwise`, i.e. ``dpo``) builds its pairs from them and needs them;
    then ``train.batch_size`` counts pairs, the pairs go to ``out_dir/pairs.jsonl`` and their counts to
    ``train_log.json``. Other losses ignore ``records``.

    ``checkpoint_dir``: where Trainer checkpoints go every ``train.save_steps`` steps (default 50; 0 = none),
    keeping ``train.save_total_limit`` (default 1); training resumes from the newest complete one found there
    (``train_log.json`` then records ``resumed_from_step``). ``callbacks``: extra ``TrainerCallback``s.
    """
    from peft import PeftModel, get_peft_model
    from transformers import TrainingArguments, set_seed

    validate_train_cfg(train_cfg)
    if len(items) != len(weights):
        raise ValueError(f"train_lora: {len(items)} items but {len(weights)} weights")
    if not items:
        raise ValueError("train_lora: no training items")
    bad = [i for i, w in enumerate(weights) if not (math.isfinite(float(w)) and float(w) >= 0.0)]
    if bad:
        raise ValueError(f"train_lora: weights must be finite and >= 0; item {bad[0]} has {weights[bad[0]]!r}")
    if isinstance(model, PeftModel):
        raise ValueError("train_lora: the model already carries a peft adapter; pass the base model")

    pairwise = losses.is_pairwise(loss_cfg)
    pairs: list[dict] = []
    if pairwise:
        if not has_samples(records):
            raise ValueError(f"train_lora: loss {loss_cfg.get('name')} builds its pairs from the detection's sampled "
                             f"answers, but {'no records were passed' if records is None else 'no record has any'}; "
                             f"pass records= (kaft.pairs.sample_responses, or a detection that saves samples: "
                             f"estimator=sample or icl)")
        s = losses.DPO.settings(loss_cfg)
        pairs = build_pairs(items, records, s["pairs"], s["max_pairs"], seed, domain=domain, instruction=instruction,
                            source=s["pair_source"])
        if not pairs:
            raise ValueError(f"train_lora: loss {loss_cfg.get('name')} (pairs={s['pairs']}, pair_source="
                             f"{s['pair_source']}): no item has both a chosen and a wrong sampled answer, so there is "
                             f"no preference pair to train on")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_length = int(train_cfg["max_length"])
    if pairwise:
        rows = build_pair_examples(tokenizer, pairs, weights, max_length)
        (out_dir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    else:
        rows = build_examples(tokenizer, items, weights, domain, instruction, max_length)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0  # masked out anyway

    set_seed(seed)  # LoRA's A matrices are initialised randomly
    if train_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, _lora_config(train_cfg["lora"]))

    use_cuda = torch.cuda.is_available()
    bf16 = bool(use_cuda and torch.cuda.is_bf16_supported())
    save_steps = int(train_cfg.get("save_steps", 50))
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
        save_total_limit=int(train_cfg.get("save_total_limit", 1)),
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=not use_cuda,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        log_level="warning",
    )
    trainer_cls, collator = ((_make_pair_trainer_class(), PairCollator(pad_id)) if pairwise else
                             (_make_trainer_class(), WeightedCollator(pad_id)))
    trainer = trainer_cls(model=model, args=args, train_dataset=_ListDataset(rows), data_collator=collator,
                          loss_cfg=loss_cfg, callbacks=list(callbacks or []) or None)
    resume = last_checkpoint(checkpoint_dir) if checkpointing else None
    resumed_from = None
    if resume is not None:
        resumed_from = int(json.loads((resume / "trainer_state.json").read_text()).get("global_step", 0))
        log.info("resuming training from checkpoint %s (step %d)", resume, resumed_from)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    model = trainer.model
    model.eval()
    model.save_pretrained(str(out_dir))
    history = [dict(h) for h in trainer.state.log_history]
    summary = {"train_loss": result.training_loss, "global_step": result.global_step, "log_history": history,
               "resumed_from_step": resumed_from}
    if pairwise:
        summary.update(n_pairs=len(pairs), n_items_with_pairs=len({p["index"] for p in pairs}))
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=1, default=float))
    log.info("trained %d %s for %d steps, final train loss %.4f; adapter in %s", len(rows),
             "pairs" if pairwise else "items", result.global_step, result.training_loss, out_dir)
    return model
