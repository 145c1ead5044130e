"""The ``train`` config: its keys, the checks run before any model loads, and the LoRA config it names.

``train.finetune`` (``lora`` | ``full``) says what training changes; under ``full`` the ``lora`` settings (a model
config may still give some) are not read, not checked and not part of the train cache key (kaft/stages.py).

``train.save_steps`` and ``train.save_total_limit`` (:data:`CHECKPOINT_KEYS`) only decide how often progress is
saved, not the adapter, so the train stage (kaft/stages.py) leaves them out of the train cache key.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kaft import fields
from kaft.errors import ConfigError
from kaft.targets import TARGETS

LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
#: ``train.finetune``: a LoRA adapter on the frozen base model, or every parameter (:mod:`kaft.train.full`)
FINETUNES = ("lora", "full")
#: ``train.reference`` (full fine-tuning only): the reference policy of DPO / SFT_KL (:mod:`kaft.train.full`)
REFERENCES = ("auto", "copy", "precomputed")


@dataclass(frozen=True)
class TrainSpec:
    """How :func:`kaft.train.train_lora` trains, apart from the model and the data: the ``loss`` and ``train``
    configs, the seed, and the prompt settings the training prompts are built with (as detection and evaluation
    build theirs). One object instead of five parameters that travel together."""

    loss: Mapping
    train: Mapping
    seed: int
    domain: str
    instruction: str | None = None


class TrainError(ConfigError):
    """An impossible training setting or training input (printed as one ``kaft: error:`` line)."""


def _check_targets(label: str, value: Any) -> Any:
    if (
        isinstance(value, str)
        and value
        or (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value))
    ):
        return value
    raise TrainError(f'{label} must be "all-linear" or a non-empty list of module names, got {value!r}')


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """``train.lora.*``: the peft ``LoraConfig`` (keys named as peft names them)."""

    r: int = fields.integer(16, 1, help="LoRA rank")
    lora_alpha: float = fields.number(32, 0.0, lo_open=True, help="LoRA scaling numerator (peft's lora_alpha)")
    dropout: float = fields.number(0.05, 0.0, 1.0, hi_open=True, help="LoRA dropout")
    target_modules: Any = fields.unchecked(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        check=_check_targets,
        help="modules LoRA adapts",
    )


LORA_RENAMED = {"alpha": "lora_alpha"}


def _check_lora(label: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise TrainError(f"{label} must be a mapping of LoRA settings, got {value!r}")
    fields.reject_unknown(LoraSettings, label, value, renamed=LORA_RENAMED, error=TrainError)
    missing = [k for k in fields.keys_of(LoraSettings) if k not in value]
    if missing:
        raise TrainError(f"{label} is missing {missing[0]!r}")
    fields.parse(LoraSettings, value, label, TrainError)
    return value


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``train.*`` (conf/train/lora.yaml; KaFT App. A.2 defaults, model configs override them). ``None`` is not a
    default here: a config states every required key, because it is part of the train cache key as written."""

    batch_size: int = fields.integer(16, 1, help="per-device batch size")
    grad_accum: int = fields.integer(1, 1, help="gradient accumulation steps")
    lr: float = fields.number(1.0e-4, 0.0, lo_open=True, help="peak learning rate")
    lr_scheduler: str = fields.choice("cosine", LR_SCHEDULERS, help="transformers' scheduler name")
    warmup_ratio: float = fields.number(0.1, 0.0, 1.0, hi_open=True, help="fraction of steps warming up")
    epochs: int = fields.integer(1, 1, help="passes over the training set")
    max_length: int = fields.integer(2048, 1, help="tokens per training sequence")
    weight_decay: float = fields.number(0.0, 0.0, help="AdamW weight decay")
    logging_steps: int = fields.integer(10, 1, help="steps between loss log lines")
    save_steps: int = fields.integer(50, 0, hint=" (0 turns checkpoints off)", help="steps between checkpoints")
    save_total_limit: int = fields.integer(1, 1, help="checkpoints kept")
    gradient_checkpointing: bool = fields.flag(False, help="recompute activations (less memory, ~1/3 slower)")
    target: str = fields.choice(
        "auto",
        TARGETS,
        hint=" (auto: letter for multiple-choice data, response for free-form data; kaft/targets.py)",
        help="what an item trains on after its prompt: letter | option | response (kaft.targets)",
    )
    response_eos: bool = fields.flag(
        False,
        help="end a response target with the tokenizer's EOS token, so that generation learns to stop there",
    )
    context: bool = fields.flag(
        False,
        hint=" (Ren et al. Exp-II, §5: each training item's context, meta['context'], precedes its question)",
        help="contextualized IFT: prepend each training item's context (its supporting evidence) at training time",
    )
    lora: dict = fields.unchecked(None, help="the LoRA adapter (train.lora.*; checked under finetune=lora)")
    finetune: str = fields.choice(
        "lora",
        FINETUNES,
        hint=" (conf/train/lora.yaml or conf/train/full.yaml: train=full)",
        help="what training changes: a LoRA adapter (lora) or every parameter of the model (full)",
    )
    distributed: str = fields.choice(
        "none",
        ("none", "ddp"),
        hint=" (ddp: torchrun --nproc-per-node N -m kaft.run, or hydra.launcher.tasks_per_node=N on SLURM;"
        " kaft/train/distributed.py)",
        help="one process, or DDP over torchrun's ranks or a submitit job's tasks (global batch = batch_size x"
        " grad_accum x ranks)",
    )
    reference: str = fields.choice(
        "auto",
        REFERENCES,
        hint=" (auto: precomputed for DPO, copy for SFT_KL; kaft/train/full.py)",
        help="full fine-tuning's reference model for dpo / sft_kl: a frozen copy or log-probs computed before training",
    )


# optional train settings that only decide how often progress is saved, not the adapter (left out of cache keys)
CHECKPOINT_KEYS = ("save_steps", "save_total_limit")
CHECKPOINT_DEFAULTS = {k: v for k, v in fields.defaults_of(TrainSettings).items() if k in CHECKPOINT_KEYS}
#: optional keys whose default reproduces what kaft did before they existed (an older config may lack them)
OPTIONAL_KEYS = (
    "gradient_checkpointing",
    "target",
    "response_eos",
    "context",
    "finetune",
    "reference",
    "distributed",
)
#: the keys every train config holds (the optional ones: the checkpoint keys and :data:`OPTIONAL_KEYS`); ``lora``
#: only under ``finetune: lora``
TRAIN_KEYS = tuple(k for k in fields.keys_of(TrainSettings) if k not in (*CHECKPOINT_KEYS, *OPTIONAL_KEYS))


def is_full(train_cfg: Mapping) -> bool:
    """Whether ``train_cfg`` fine-tunes every parameter (``train.finetune: full``) rather than a LoRA adapter."""
    return train_cfg.get("finetune", "lora") == "full"


def validate_train_cfg(train_cfg: Mapping) -> None:
    """Raise :class:`TrainError` (one actionable line) for an impossible training config; call before models
    load. Every key but the checkpoint ones is required: the config is part of the train cache key as written."""
    fields.reject_unknown(TrainSettings, "train", train_cfg, error=TrainError)
    fields.parse(TrainSettings, train_cfg, "train", TrainError)  # first: finetune decides which keys are required
    full = is_full(train_cfg)
    missing = [k for k in TRAIN_KEYS if k not in train_cfg and not (full and k == "lora")]
    if missing:
        raise TrainError(f"train config is missing {missing}")
    if not full:
        _check_lora("train.lora", train_cfg["lora"])
        if train_cfg.get("reference", "auto") != "auto":
            raise TrainError(
                f"train.reference={train_cfg['reference']} is read only under train.finetune=full (train=full): "
                "LoRA's reference model is the base model with the adapter disabled"
            )


def reference_kind(train_cfg: Mapping, needs: str) -> str | None:
    """Full fine-tuning's reference for a loss that ``needs`` one (``"pairs"``: DPO, ``"reference"``: SFT_KL):
    ``"copy"`` or ``"precomputed"`` (``train.reference``, auto resolved: :mod:`kaft.train.full`); None under LoRA
    (the adapter-disabled base model) or for a loss that reads no reference. An impossible pairing raises
    :class:`TrainError` (the config check calls this before any model loads)."""
    if not is_full(train_cfg) or needs not in ("pairs", "reference"):
        return None
    kind = train_cfg.get("reference", "auto")
    if kind == "auto":
        return "precomputed" if needs == "pairs" else "copy"
    if kind == "precomputed" and needs == "reference":
        raise TrainError(
            "train.reference=precomputed cannot serve loss=sft_kl: its KL reads the reference's whole distribution "
            "at every label position; use train.reference=copy (or auto)"
        )
    return kind


def key_settings(train_cfg: Mapping, needs: str, ranks: int = 1) -> dict:
    """The train settings that enter a train cache key (kaft/stages.py): under ``train.finetune: full`` without the
    LoRA settings (a model config may give them; full fine-tuning does not read them) and with the reference
    :func:`reference_kind` resolves ``auto`` to for the loss; under ``train.distributed: ddp`` with the number of
    ``ranks`` (the global batch is ``batch_size x grad_accum x ranks``). A one-process LoRA job's settings as is."""
    out = dict(train_cfg)
    if is_full(train_cfg):
        out = {k: v for k, v in out.items() if k != "lora"}
        out["reference"] = reference_kind(train_cfg, needs)
    if train_cfg.get("distributed", "none") != "none":
        out["ranks"] = ranks
    return out


@contextmanager
def peft_wrap() -> Iterator[None]:
    """Around a peft wrap (``get_peft_model``, ``PeftModel.from_pretrained``): peft reads the model's
    ``is_gradient_checkpointing``, which transformers 5 deprecates with a FutureWarning however kaft calls peft (no
    argument avoids it); only that warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def lora_config(lora: Mapping):
    """The peft ``LoraConfig`` of ``train.lora`` (``{r, lora_alpha, dropout, target_modules}``)."""
    from peft import LoraConfig  # lazy: peft imports torch; needed only to make or load an adapter

    targets = lora["target_modules"]
    targets = targets if isinstance(targets, str) else list(targets)  # "all-linear" or a list of module names
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=int(lora["r"]),
        lora_alpha=float(lora["lora_alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=targets,
        bias="none",
    )
