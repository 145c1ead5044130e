"""The arithmetic behind ``python -m kaft.sweep.plan``: a model built on PyTorch's ``meta`` device for its parameter
counts, GPU memory per stage and FLOP-based times. No weights are loaded, so it runs on a login node.

The formulas are upper bounds meant to catch a job that cannot fit before it waits in a queue; docs/slurm.md
("Plan a sweep before submitting") states them. GB here are GiB (2^30 bytes), as nvidia-smi counts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kaft import detection
from kaft import stages as S
from kaft import strategy as strategy_mod
from kaft.errors import KaftError
from kaft.prompts import answer_text, format_question
from kaft.targets import prompt

GB = 2**30
OVERHEAD_GB = 1.5  # CUDA context, cuBLAS workspace and allocator slack per process
ANSWER_TOKENS = 4  # label tokens per training sample that get logits (the letter, and what follows it)
LORA_STATE_BYTES = 16  # per trainable LoRA parameter: fp32 weight, fp32 gradient, Adam's two fp32 moments
ADAM_MOMENT_BYTES = 8  # Adam's two fp32 moments per trained parameter
MASTER_BYTES = 4  # the fp32 master copy of a 16-bit weight under mixed precision (ZeRO §3.1: K = 12 with the moments)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CHARS_PER_TOKEN = 4.0  # when no tokenizer is available locally
ASSUMED_QUESTION_CHARS = 1000  # one question block (question + options) when the data cannot be loaded here
REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


class PlanError(KaftError):
    """A model or setting the plan cannot work with; the message says what to fix."""


@dataclass(frozen=True)
class Arch:
    """The architecture facts the plan needs (transformers config names); ``extra`` goes to the config as is."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int
    tie_word_embeddings: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], where: str) -> Arch:
        missing = [k for k in REQUIRED if fields.get(k) in (None, "")]
        if missing:
            raise PlanError(f"{where} lacks {', '.join(missing)}; give the published config.json values")
        ints = {}
        for k in REQUIRED[1:] + ("num_key_value_heads", "head_dim"):
            v = fields.get(k)
            if v is None and k in ("num_key_value_heads", "head_dim"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanError(f"{where}.{k} must be a positive integer, got {v!r}")
            ints[k] = v
        heads = ints["num_attention_heads"]
        known = set(REQUIRED) | {"num_key_value_heads", "head_dim", "tie_word_embeddings"}
        return cls(
            model_type=str(fields["model_type"]),
            num_key_value_heads=ints.get("num_key_value_heads", heads),
            head_dim=ints.get("head_dim", ints["hidden_size"] // heads),
            tie_word_embeddings=bool(fields.get("tie_word_embeddings", False)),
            extra={k: v for k, v in fields.items() if k not in known},
            **{k: ints[k] for k in REQUIRED[1:]},
        )

    @classmethod
    def from_config(cls, config: Any) -> Arch:
        """From a transformers config (a model's own config.json)."""
        g = lambda k, d=None: getattr(config, k, d)  # noqa: E731
        fields = {k: g(k) for k in REQUIRED + ("num_key_value_heads", "head_dim", "tie_word_embeddings")}
        fields.update({k: g(k) for k in ("attention_bias", "partial_rotary_factor") if g(k) is not None})
        return cls.from_fields(fields, "the model's config.json")

    def config_kwargs(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "head_dim": self.head_dim,
            "tie_word_embeddings": self.tie_word_embeddings,
            **self.extra,
        }

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


@dataclass(frozen=True)
class Params:
    total: int  # every parameter of the base model (tied embeddings once)
    lora: int  # trainable LoRA parameters
    matmul: int  # parameters that cost FLOPs per token (all but the input embedding)
    model_class: str


def _check_targets(peft_model, targets: Any, model_class: str) -> None:
    """peft only fails when *no* target matches; a misspelt name among right ones would silently train less."""
    if isinstance(targets, str):
        return
    hit = [str(n) for n in getattr(peft_model, "targeted_module_names", [])]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in hit)]
    if unmatched:
        import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

        names = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in peft_model.base_model.model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
            - {"lm_head"}
        )
        raise PlanError(
            f"train.lora.target_modules {unmatched} match no module of {model_class}; its linear layers are {names}"
        )


def count_params(arch: Arch, lora: Mapping) -> Params:
    """Build the model on the ``meta`` device (no memory, no weights) and wrap it with the job's LoRA config, as
    training will: an unknown architecture or a wrong target-module name fails here, not on the cluster."""
    # lazy: torch, peft and transformers are slow to import; only the parameter count needs them
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from kaft.train import lora_config as _lora_config  # lazy: kaft.train imports torch

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    try:
        config = AutoConfig.for_model(arch.model_type, **arch.config_kwargs())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as e:
        raise PlanError(
            f"cannot build model_type {arch.model_type!r} with this transformers: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    matmul = total - (0 if arch.tie_word_embeddings else embed)
    cls = type(model).__name__
    try:
        peft_model = get_peft_model(model, _lora_config(lora))
    except ValueError as e:
        raise PlanError(
            f"train.lora.target_modules {list(lora['target_modules'])} do not fit {cls}: {str(e).splitlines()[0]}"
        ) from None
    _check_targets(peft_model, lora["target_modules"], cls)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return Params(total, trainable, matmul, cls)


def dtype_bytes(dtype: Any) -> int:
    return DTYPE_BYTES.get(str(dtype).replace("torch.", ""), 2)  # auto: the checkpoints kaft plans for are 16-bit


@dataclass
class Lengths:
    probe: int  # tokens of the longest probe prompt (detection memory)
    probe_mean: float
    train: float  # mean tokens of a training sample (zero-shot prompt + answer)
    eval: float  # mean tokens of a benchmark prompt with its longest option
    how: str


# ----------------------------------------------------------------------------------------------- prompts
def arch_of(mcfg: dict, path: str | None) -> Arch:
    """The model config's ``architecture`` fields, else the model's config.json from a local dir or the HF cache."""
    if mcfg.get("architecture"):
        return Arch.from_fields(mcfg["architecture"], "model.architecture")
    from transformers import AutoConfig  # lazy: transformers imports torch; needed only to build or load a model

    try:
        return Arch.from_config(AutoConfig.from_pretrained(path, revision=mcfg.get("revision"), local_files_only=True))
    except (OSError, ValueError) as e:
        raise PlanError(
            f"model {mcfg.get('name')!r} has no model.architecture and its config.json is not "
            f"available here ({str(e).splitlines()[0][:120]}); add model.architecture "
            f"(hidden_size, num_hidden_layers, ...) to conf/model/{mcfg.get('name')}.yaml"
        ) from None


def local_tokenizer(mcfg: dict, path: str | None):
    """The model's own tokenizer if it is on this machine (a local dir or the HF cache), else None."""
    if not path:  # a model its source builds (the testbed's) has no path until it is built
        return None
    try:
        from transformers import AutoTokenizer  # lazy: transformers imports torch; needed only to build or load a model

        return AutoTokenizer.from_pretrained(path, revision=mcfg.get("revision"), local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means: estimate from characters instead
        return None


def measure(cfg, train: list | None, evals: dict | None, tok, n: int) -> Lengths:
    """Prompt lengths from real prompts (the detection's k-shot prompt, the training and zero-shot prompts) of the
    first ``n`` items, counted by the model's tokenizer, or characters / 4 when there is none here."""
    count = (lambda s: len(tok(s)["input_ids"])) if tok is not None else (lambda s: math.ceil(len(s) / CHARS_PER_TOKEN))
    shots = int(cfg.detection.shots)
    if not train or len(train) <= shots or not hasattr(train[0], "options"):
        q = math.ceil(ASSUMED_QUESTION_CHARS / CHARS_PER_TOKEN)
        return Lengths(
            q * (shots + 1),
            q * (shots + 1),
            q + 2,
            q + 2,
            f"assumed {ASSUMED_QUESTION_CHARS} characters per question (data not loadable here, "
            f"free-form or too small)",
        )
    det, dom, ins = detection.settings(dict(cfg.detection)), cfg.dataset.domain, cfg.dataset.get("instruction")
    items = train[:n]
    how = (
        f"measured with the model's tokenizer on {len(items)} items"
        if tok is not None
        else f"estimated as characters / {CHARS_PER_TOKEN:g} (no tokenizer here)"
    )
    queries = detection.build_queries(
        items, 1, shots, int(cfg.seed), dom, ins, det["prompt"], det["order_scheme"], shot_pool=train
    )
    probe = [count(q.prompt) for q in queries]
    kw = {"instruction": ins} if ins else {}
    tr = [
        count(format_question(it.question, it.options, it.domain or dom, **kw) + answer_text(it.answer)) for it in items
    ]
    ev = (
        [  # a free-form item: its generative prompt and reference answer
            count(prompt(it, dom, ins) + " " + (max(it.options, key=len) if hasattr(it, "options") else it.answer))
            for items_b in (evals or {}).values()
            for it in items_b[:n]
        ]
        or tr
    )
    return Lengths(max(probe), sum(probe) / len(probe), sum(tr) / len(tr), sum(ev) / len(ev), how)


# ----------------------------------------------------------------------------------------------- memory
def kv_bytes_per_token(arch: Arch, nbytes: int) -> int:
    return 2 * arch.num_hidden_layers * arch.kv_dim * nbytes


def _layer_working_set(arch: Arch, tokens: int, nbytes: int) -> int:
    """Transient tensors of one decoder layer in a no-grad forward: q, k, v, attention out, gate, up, act."""
    return tokens * (2 * arch.hidden_size + 2 * arch.kv_dim + 3 * arch.intermediate_size) * nbytes


def detection_memory(
    arch: Arch, p: Params, nbytes: int, batch: int, seqs_per_prompt: int, prompt_tokens: int, new_tokens: int
) -> dict:
    """Weights + KV cache of ``batch × seqs_per_prompt`` sequences of prompt + new tokens + the prefill's
    working set + the fp32 logits of the last position."""
    seqs = batch * seqs_per_prompt
    parts = {
        "weights": p.total * nbytes,
        "kv_cache": seqs * (prompt_tokens + new_tokens) * kv_bytes_per_token(arch, nbytes),
        "prefill": _layer_working_set(arch, batch * prompt_tokens, nbytes),
        "logits": seqs * arch.vocab_size * 4,
        "overhead": OVERHEAD_GB * GB,
    }
    return {k: v / GB for k, v in parts.items()}


def activations_per_token_layer(arch: Arch, nbytes: int, lora_dropout: float) -> float:
    """Bytes one token leaves saved for backward in one Llama-style layer under LoRA (frozen base weights save no
    input for their own gradient): norms 2×2h, attention q, k, v and output (2h + 2kv), MLP gate, up, act and
    product (4i); LoRA dropout keeps a copy of each adapted input (6h + i) and a 1-byte mask."""
    h, kv, i = arch.hidden_size, arch.kv_dim, arch.intermediate_size
    saved = (6 * h + 2 * kv + 4 * i) * nbytes
    if lora_dropout > 0:
        saved += (6 * h + i) * (nbytes + 1)
    return saved


def model_states(p: Params, nbytes: int, full: bool) -> dict[str, float]:
    """Bytes of the model states of one unsharded replica. LoRA: the frozen weights and 16 bytes per adapter
    parameter (:data:`LORA_STATE_BYTES`). Full fine-tuning (``train=full``): weights and gradients in the model's
    dtype, Adam's moments in fp32 and, for 16-bit weights, an fp32 master copy: 16 bytes per parameter either way
    (2 + 2 + 12 in bfloat16, ZeRO's mixed-precision Adam; 4 + 4 + 8 in float32)."""
    if not full:
        return {"weights": p.total * nbytes, "lora_optimizer": p.lora * LORA_STATE_BYTES}
    master = MASTER_BYTES if nbytes < 4 else 0
    return {
        "weights": p.total * nbytes,
        "gradients": p.total * nbytes,
        "optimizer": p.total * (ADAM_MOMENT_BYTES + master),
    }


def training_memory(
    arch: Arch, p: Params, nbytes: int, batch: int, max_length: int, lora_dropout: float, full: bool = False
) -> dict:
    """Model states (:func:`model_states`), and activations at ``batch × max_length`` tokens without and with
    gradient checkpointing (then: each layer's input, plus one layer's activations recomputed during backward)."""
    tokens = batch * max_length
    layer = activations_per_token_layer(arch, nbytes, lora_dropout) * tokens
    logits = batch * ANSWER_TOKENS * arch.vocab_size * (nbytes + 4 + 4)  # logits, fp32 upcast, its gradient
    base = {**model_states(p, nbytes, full), "logits": logits, "overhead": OVERHEAD_GB * GB}
    plain = {**base, "activations": layer * arch.num_hidden_layers}
    ckpt = {**base, "activations": tokens * arch.num_hidden_layers * arch.hidden_size * nbytes + layer}
    return {
        "no_checkpointing": {k: v / GB for k, v in plain.items()},
        "checkpointing": {k: v / GB for k, v in ckpt.items()},
    }


def evaluation_memory(arch: Arch, p: Params, nbytes: int, batch: int, tokens: int) -> dict:
    """lm-eval's loglikelihood batches: weights, the KV cache a forward builds, one layer's working set, and the
    logits with their log-softmax over every position."""
    n = batch * tokens
    parts = {
        "weights": p.total * nbytes,
        "kv_cache": n * kv_bytes_per_token(arch, nbytes),
        "forward": _layer_working_set(arch, n, nbytes),
        "logits": n * arch.vocab_size * nbytes * 2,
        "overhead": OVERHEAD_GB * GB,
    }
    return {k: v / GB for k, v in parts.items()}


def max_batch(total_gb: float, fixed_gb: float, gpu_gb: float, batch: int) -> int:
    """The largest batch that fits ``gpu_gb`` when memory is ``fixed_gb`` plus a part linear in the batch."""
    per = (total_gb - fixed_gb) / batch
    return int((gpu_gb - fixed_gb) // per) if per > 0 else batch


# ----------------------------------------------------------------------------------------------- time
def forward_flops(arch: Arch, p: Params, tokens: float, context: float) -> float:
    """2 FLOPs per matmul parameter and token, plus causal attention (QKᵀ and AV over ``context`` / 2 on average)."""
    attn = 2 * arch.num_hidden_layers * context * arch.num_attention_heads * arch.head_dim
    return tokens * (2 * p.matmul + attn)


def seconds(flops: float, peak_tflops: float, mfu: float) -> float:
    return flops / (peak_tflops * 1e12 * mfu)


# ----------------------------------------------------------------------------------------------- a job
def probe_shape(det_cfg) -> tuple[int, int, int]:
    """(option orders per item, sequences per query, new tokens per sequence) as the detector declares them: a
    detector reading letter probabilities generates nothing."""
    d = detection.detector_for(S.plain(det_cfg))
    need = d.need()
    if need.letter_probs:
        return d.layout().n_orders, 1, 0
    return d.layout().n_orders, int(need.samples), int(need.max_new_tokens)


def job_memory(cfg, arch: Arch, prm: Params, ln: Lengths) -> dict[str, dict]:
    """GB per stage (parts and total) at the job's batch sizes; training both with and without checkpointing."""
    det, tr = cfg.detection, cfg.train
    nb = dtype_bytes(cfg.model.get("dtype"))
    _, seqs, new = probe_shape(det)
    d = detection_memory(arch, prm, nb, int(det.batch_size), seqs, ln.probe, new)
    full = tr.get("finetune") == "full"  # train=full: no LoRA dropout, all of the model trains
    dropout = 0.0 if full else float(tr.lora.dropout)
    t = training_memory(arch, prm, nb, int(tr.batch_size), int(tr.max_length), dropout, full)
    e = evaluation_memory(arch, prm, nb, int(cfg.evaluation.batch_size), math.ceil(ln.eval))
    return {
        "detection": d,
        "train_checkpointing": t["checkpointing"],
        "train_no_checkpointing": t["no_checkpointing"],
        "evaluation": e,
        "_seqs": {"seqs": seqs, "new": new},
    }


def job_times(
    cfg, arch: Arch, prm: Params, ln: Lengths, n_train: int | None, n_eval: dict | None, s
) -> dict[str, float]:
    """Seconds per stage (for 1,000 training and benchmark items when the data cannot be loaded here)."""
    det, n = cfg.detection, n_train or 1000
    orders, seqs, new = probe_shape(det)
    sampled = new > 0
    prompts = n * orders
    flops = forward_flops(arch, prm, prompts * ln.probe_mean, ln.probe_mean)
    if sampled:
        flops += forward_flops(arch, prm, prompts * seqs * new, 2 * ln.probe_mean)
    if strategy_mod.needs_greedy(S.plain(cfg.strategy)) and not detection.holds_greedy(S.plain(det)):
        # the job's extra greedy pass (kaft.stages.stage_greedy)
        flops += forward_flops(arch, prm, n * ln.probe_mean, ln.probe_mean)
    out = {"detection": seconds(flops, s.peak_tflops, s.mfu)}
    passes = 3 if cfg.train.get("gradient_checkpointing") else 2  # forward, input gradients, recompute
    passes += cfg.train.get("finetune") == "full"  # full fine-tuning: the weight gradients, one more forward's FLOPs
    trains = strategy_mod.trains(S.plain(cfg.strategy))
    tokens = n * float(cfg.train.epochs) * ln.train if trains else 0
    out["train"] = seconds(passes * forward_flops(arch, prm, tokens, ln.train), s.peak_tflops, s.mfu)
    options = 4  # lm-eval scores every option of every item as its own request
    ev_items = sum(n_eval.values()) if n_eval else 1000
    one = seconds(forward_flops(arch, prm, ev_items * options * ln.eval, ln.eval), s.peak_tflops, s.mfu)
    out["evaluate_base"] = one if cfg.evaluation.get("base", True) or not trains else 0.0
    out["evaluate"] = one if trains else 0.0
    return out
