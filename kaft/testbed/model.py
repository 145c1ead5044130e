"""The testbed's tiny Llama, pretrained from scratch on the synthetic world's corpus on the CPU.

:func:`build_model` returns a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load like
any hub checkpoint, built once per config and cached (``Cache.get_or_create("testbed_model", ...)``), so the rest of
kaft never needs to know the model is synthetic.

Model: ``LlamaForCausalLM`` with head_dim 64 (what the vLLM backend needs), untied embeddings, trained with AdamW at
a high learning rate on whole documents packed into short rows, in fp32 (bf16 autocast only with
``pretrain.precision: bf16``: the precision is configured, never chosen by the CPU). Three attention heads that bind
option letters to option values are built in and kept fixed (:mod:`kaft.testbed.binding`: a model this small cannot
learn that skill in the CPU budget); all knowledge is learned. After pretraining the matching head is weakened and
the letters calibrated (:mod:`kaft.testbed.release`) so that the released model, like a base LLM, answers below what
it knows and fine-tuning has a readout to restore. The tokenizer is word level (:mod:`kaft.testbed.tokenizer`).
``testbed.json`` beside the weights records the build's precision, torch version and CPU kernel family
(:func:`kaft.testbed.cpu.build_env`). Builds on different kernel families differ in rounding, and so in their
weights; the design keeps the targets (:func:`kaft.testbed.report.targets`) met on each
(``python -m kaft.testbed.matrix``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path

from kaft.cache import Cache, make_key
from kaft.testbed.binding import install_binding_heads
from kaft.testbed.config import WorldConfigError, key_config, resolve_config
from kaft.testbed.cpu import build_env
from kaft.testbed.release import calibrate_letters, release_readout
from kaft.testbed.tokenizer import build_tokenizer
from kaft.testbed.world import World, build_world

log = logging.getLogger(__name__)

# bump when anything changes what a build produces (it is part of the cache key): this module, the world, the
# tokenizer, the binding heads or the release
VERSION = "3"


def llama_config(m: Mapping, tok):
    from transformers import LlamaConfig  # lazy: transformers imports torch; needed only to build or load a model

    hidden, heads = int(m["hidden_size"]), int(m["num_heads"])
    if hidden != 64 * heads:
        raise WorldConfigError(
            f"testbed model: hidden_size ({hidden}) must be 64 x num_heads ({heads}): "
            f"head_dim 64 is what the vLLM backend supports"
        )
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=int(m["intermediate_size"]),
        num_hidden_layers=int(m["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=int(m["max_position_embeddings"]),
        rope_theta=float(m["rope_theta"]),
        tie_word_embeddings=bool(m["tie_word_embeddings"]),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------- pretraining
def _rows(
    docs: list[tuple[list[int], list[int]]], seq_len: int, rng: random.Random, bos: int, eos: int, bos_drop: float
):
    """One epoch of training rows ``(ids, labels)``: shuffled whole documents (``<s> doc </s>``, ``<s>``
    sometimes left out, as prompts may come without it) packed greedily into rows of ``seq_len``; none is cut."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    rows, cur, cur_t = [], [], []
    for i in order:
        ids, tgt = docs[i]
        pre = [] if rng.random() < bos_drop else [bos]
        d, t = pre + ids[: seq_len - 2] + [eos], [-100] * len(pre) + tgt[: seq_len - 2] + [-100]
        if len(cur) + len(d) > seq_len:
            rows.append((cur, cur_t))
            cur, cur_t = [], []
        cur, cur_t = cur + d, cur_t + t
    if cur:
        rows.append((cur, cur_t))
    rng.shuffle(rows)
    return rows


def _labels(ids: list[int], is_mc: bool, qmark: int) -> list[int]:
    """LM targets of a document; in MC documents the token after a question's "?" ("Options") is not a target, so
    they do not teach the model to drop the value it recalls there (quiz statements put the value right there)."""
    t = list(ids)
    if is_mc:
        for j in range(1, len(ids)):
            if ids[j - 1] == qmark:
                t[j] = -100
    return t


def _optimizer(model, p: Mapping, steps: int):
    """AdamW (no decay on embeddings, norms and biases) with linear warmup, then cosine decay to ``min_lr_ratio``."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "embed" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(p["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(p["lr"]),
        betas=tuple(float(b) for b in p["betas"]),
        eps=1e-8,
    )
    warm, floor = int(p["warmup_steps"]), float(p["min_lr_ratio"])

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _tensors(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``(input_ids, labels)`` of a batch of rows."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    width = max(len(r) for r, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (r, t) in enumerate(batch):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(t)] = torch.tensor(t)
    return ids, labels


def _loss(model, ids, labels, bf16: bool, rnorm: float, rmax: float):
    """LM loss, plus (``rnorm`` > 0) a penalty on residual RMS above ``rmax``: the built-in heads read fixed-size
    signals from the residual stream, which a residual grown 50x would drown."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, labels=labels, output_hidden_states=rnorm > 0)
    loss = out.loss.float()
    if rnorm > 0:
        rms = torch.stack([h.float().pow(2).mean(-1).sqrt() for h in out.hidden_states[1:-1]])
        loss = loss + rnorm * torch.relu(rms - rmax).pow(2).mean()
    return loss


def _step(model, loss, opt, sched, restore, grad_clip: float) -> None:
    """One optimiser step; the binding heads' fixed entries get no gradient and are put back after the step."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    loss.backward()
    if restore is not None:
        restore.zero_grads()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if restore is not None:
        restore()
    sched.step()
    opt.zero_grad(set_to_none=True)


def _init_model(world: World, tok, cfg: Mapping):
    """A fresh LlamaForCausalLM (seeded) with the binding heads installed when enabled; ``(model, restore)``."""
    # lazy: torch takes seconds to import; a cached re-run never needs it
    import torch
    from transformers import LlamaForCausalLM

    m, p, seed = cfg["model"], cfg["pretrain"], int(cfg["seed"])
    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(m, tok))
    restore = install_binding_heads(model, tok, world, m["binding"], seed) if m["binding"]["enabled"] else None
    model.train()
    return model, restore


def pretrain(world: World, tok, cfg: Mapping, progress: bool = True, callback=None):
    """Train a fresh LlamaForCausalLM on the world's corpus for a resolved testbed ``cfg``; returns
    ``(model, stats)``. ``callback(step, model)``, if given, runs after every logged step (diagnostics; not part of
    the build)."""
    from tqdm.auto import tqdm  # lazy: tqdm.auto is slow to import; needed only when a stage computes

    p, seed = cfg["pretrain"], int(cfg["seed"])
    model, restore = _init_model(world, tok, cfg)
    seq_len, bsz, steps, every = int(p["seq_len"]), int(p["batch_size"]), int(p["steps"]), int(p["log_every"])
    qmark = tok.convert_tokens_to_ids("?")
    docs = [
        (d, _labels(d, i >= len(world.paragraphs), qmark))
        for i, d in enumerate(tok(world.corpus(), add_special_tokens=False)["input_ids"])
    ]
    opt, sched = _optimizer(model, p, steps)
    bf16 = p["precision"] == "bf16"  # resolve_config admits fp32 and bf16 only
    rnorm = float(p["residual_penalty"]) if cfg["model"]["binding"]["enabled"] else 0.0
    rng = random.Random(f"kaft-testbed|{seed}|pretrain")
    rows: list[tuple[list[int], list[int]]] = []
    epoch, tokens, t0, losses = 0, 0, time.time(), []
    bar = tqdm(range(steps), desc="testbed pretrain", disable=not progress, mininterval=2)
    for step in bar:
        while len(rows) < bsz:
            rows += _rows(docs, seq_len, rng, tok.bos_token_id, tok.eos_token_id, float(p["bos_drop"]))
            epoch += 1
        batch, rows = rows[:bsz], rows[bsz:]
        tokens += sum(len(r) for r, _ in batch)
        loss = _loss(model, *_tensors(batch, tok.pad_token_id), bf16, rnorm, float(p["residual_max"]))
        _step(model, loss, opt, sched, restore, float(p["grad_clip"]))
        losses.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            avg = sum(losses[-every:]) / len(losses[-every:])
            bar.set_postfix(loss=f"{avg:.3f}", epoch=epoch)
            log.info(
                "testbed pretrain step %d/%d loss %.3f (epoch %d, %.0fs)", step + 1, steps, avg, epoch, time.time() - t0
            )
            if callback is not None:
                model.eval()
                callback(step + 1, model)
                model.train()
    model.eval()
    return model, {
        "steps": steps,
        "epochs": epoch,
        "tokens": tokens,
        "seconds": time.time() - t0,
        "precision": "bf16" if bf16 else "fp32",
        "build_env": build_env(),
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "parameters": sum(q.numel() for q in model.parameters()),
    }


# ----------------------------------------------------------------------------------------------- the build
def build_into(out_dir: str | Path, cfg: Mapping | None = None, progress: bool = True) -> dict:
    """World + tokenizer + pretraining, saved into ``out_dir`` (model, tokenizer, ``testbed.json``)."""
    t0 = time.time()
    full = resolve_config(cfg)
    world = build_world(full)
    tok = build_tokenizer(world, int(full["model"]["max_position_embeddings"]))
    log.info("testbed world: %d facts, %d documents, vocabulary %d", len(world.facts), len(world.corpus()), len(tok))
    model, stats = pretrain(world, tok, full, progress)
    if full["model"]["binding"]["enabled"]:
        b = full["model"]["binding"]
        stats["release_m_gain"] = release_readout(model, tok, world, b)
        if b["release_calibrated"] and b.get("release_accuracy") is not None:
            stats["release_letter_scale"] = calibrate_letters(model, tok, world, b)
        log.info(
            "testbed readout: head M gain %.3g, letter scale %.3g (0-shot accuracy on format facts %s)",
            stats["release_m_gain"],
            stats.get("release_letter_scale", 1.0),
            b["release_accuracy"],
        )
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stats = {**stats, "build_seconds": time.time() - t0, "vocab_size": len(tok), "version": VERSION}
    (out / "testbed.json").write_text(json.dumps({"config": full, "stats": stats}, indent=2))
    log.info(
        "testbed model built in %.1fs (%d steps, %.0f tokens/s)",
        stats["build_seconds"],
        stats["steps"],
        stats["tokens"] / max(stats["seconds"], 1e-9),
    )
    return stats


def model_key(cfg: Mapping | None = None) -> str:
    return make_key(key_config(resolve_config(cfg)), VERSION)


def build_model(cfg: Mapping | None, cache_root: str, progress: bool = True) -> Path:
    """The directory of the pretrained testbed model for ``cfg`` (built on first use, then cached)."""
    full = resolve_config(cfg)
    hit = Cache(cache_root).get_or_create(
        "testbed_model", model_key(full), lambda d: build_into(d, full, progress), meta={"version": VERSION}
    )
    return hit.path
