"""The plan's multi-GPU arithmetic (``python -m kaft.sweep.plan ... plan.gpus=N``): per-GPU training memory and time
for 1, 2, 4 ... N GPUs under DDP and FSDP, for LoRA and full fine-tuning, against ``plan.gpu_memory_gb``.

What is counted (GB = GiB), one GPU of N, at the job's per-device ``train.batch_size``:

``ddp``   every rank holds a whole replica: the model states of :func:`kaft.sweep.plan_estimate.model_states`
          (full fine-tuning: 16 bytes per parameter; LoRA: the frozen weights + 16 bytes per adapter parameter) do
          not shrink with N; only the global batch grows (``batch_size × grad_accum × N``).
``fsdp``  FULL_SHARD (ZeRO-3; Rajbhandari et al. 2020 §5): weights, gradients and optimizer state divided by N,
          plus the parameters FSDP gathers to compute one unit — the largest of a decoder layer and the
          embedding / LM head, twice (the unit being computed and the next one prefetched), in the model's dtype.

Both add the same activations, logits and per-process overhead as one GPU (each rank runs its own micro-batch;
:func:`kaft.sweep.plan_estimate.training_memory`). Time: the job's FLOP-based training time divided by N — the
assumed MFU (``plan.mfu``) is meant to include the all-reduce / all-gather time; a slow interconnect lowers it.
These are estimates to catch a setting that cannot fit before it queues, not measurements; kaft itself runs one
process per job today (docs/multi-gpu.md), so they say what a DDP / FSDP run of the same training would need.
"""

from __future__ import annotations

from collections.abc import Mapping

from kaft.sweep.plan_estimate import GB, Arch, Params, dtype_bytes, model_states

STRATEGIES = ("ddp", "fsdp")
PREFETCHED_UNITS = 2  # FSDP holds the gathered unit it computes and the next one (forward / backward prefetch)
STATE_KEYS = ("weights", "gradients", "optimizer", "lora_optimizer")


def counted_lora(train_cfg: Mapping) -> dict:
    """The LoRA settings the parameter count wraps the model with: the job's, or under ``train=full`` (which
    reads none; a model config may give partial ones) the schema's defaults, whose count the plan does not use."""
    from kaft import fields
    from kaft.train.config import LoraSettings

    if train_cfg.get("finetune") == "full" or not train_cfg.get("lora"):
        return fields.defaults_of(LoraSettings)
    return dict(train_cfg["lora"])


def largest_unit(arch: Arch, p: Params) -> int:
    """Parameters of FSDP's largest wrapped unit: a decoder layer, or the input embedding / LM head (vocab × h)."""
    embed = arch.vocab_size * arch.hidden_size
    heads = 1 if arch.tie_word_embeddings else 2
    layer = max(0, p.total - heads * embed) / arch.num_hidden_layers
    return int(max(layer, embed))


def per_gpu(states: Mapping[str, float], n: int, strategy: str, gathered: float) -> dict[str, float]:
    """Bytes of the model states on one of ``n`` GPUs: as is under DDP; divided by ``n`` under FSDP, plus the
    ``gathered`` bytes of the units it unshards to compute."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if strategy == "ddp":
        return dict(states)
    return {**{k: v / n for k, v in states.items()}, "gathered": gathered}


def training_per_gpu(
    arch: Arch, p: Params, nbytes: int, full: bool, single: Mapping[str, float], n: int, strategy: str
) -> dict[str, float]:
    """GB on one of ``n`` GPUs: the sharded model states and the rest of ``single`` (one GPU's training memory in
    GB from :func:`~kaft.sweep.plan_estimate.training_memory`: activations, logits, overhead)."""
    states = model_states(p, nbytes, full)
    gathered = PREFETCHED_UNITS * largest_unit(arch, p) * nbytes
    shared = per_gpu(states, n, strategy, gathered)
    rest = {k: v for k, v in single.items() if k not in STATE_KEYS}
    return {**{k: v / GB for k, v in shared.items()}, **rest}


def gpu_counts(most: int) -> list[int]:
    """1, 2, 4, ... up to ``most`` (and ``most`` itself)."""
    out, n = [], 1
    while n < most:
        out.append(n)
        n *= 2
    return [*out, most]


def job_parallel(cfg, arch: Arch, p: Params, job: Mapping, most: int) -> dict:
    """What the plan shows of a job on several GPUs: ``full`` (train=full), ``grad_accum`` and ``rows`` ``{gpus,
    strategy, memory (GB parts), seconds}`` for every GPU count up to ``most`` and strategy; ``job`` is the plan's
    job so far (its one-GPU ``memory``, ``times`` and ``ckpt``)."""
    full = cfg.train.get("finetune") == "full"
    nbytes = dtype_bytes(cfg.model.get("dtype"))
    single = job["memory"]["train_checkpointing" if job["ckpt"] else "train_no_checkpointing"]
    rows = [
        {
            "gpus": n,
            "strategy": strategy,
            "memory": training_per_gpu(arch, p, nbytes, full, single, n, strategy),
            "seconds": job["times"]["train"] / n,
        }
        for n in gpu_counts(most)
        for strategy in STRATEGIES
    ]
    return {"full": full, "grad_accum": int(cfg.train.grad_accum), "rows": rows}


def render_lines(j: dict, gpu_gb: float, dur) -> list[str]:
    """The plan's lines for one job: per GPU count, each strategy's GB per GPU, whether it fits, training time."""
    par = j.get("parallel")
    if not par or not j.get("trains"):
        return []
    rows, b = par["rows"], j["batch"]["train"]
    lines = [
        f"  multi-GPU   train.finetune={'full' if par['full'] else 'lora'}, per GPU at train.batch_size={b} (global "
        f"batch {b} x grad_accum {par['grad_accum']} x N); ddp replicates, fsdp shards weights, gradients, optimizer"
    ]
    for n in sorted({r["gpus"] for r in rows}):
        cells = []
        for r in (r for r in rows if r["gpus"] == n):
            total = sum(r["memory"].values())
            verdict = "fits" if total <= gpu_gb else "DOES NOT FIT"
            states = " + ".join(f"{k} {v:.1f}" for k, v in r["memory"].items() if k in (*STATE_KEYS, "gathered"))
            cells.append(f"{r['strategy']} {total:.1f} GB ({states}) {verdict}")
        secs = next(r["seconds"] for r in rows if r["gpus"] == n)
        lines.append(f"  {n:>3} GPU(s)  " + "; ".join(cells) + f"; training {dur(secs)}")
    return lines
