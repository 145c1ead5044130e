"""The testbed's tokenizer and tiny Llama, pretrained from scratch on the synthetic world's corpus on the CPU.

:func:`build_model` returns a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load like
any hub checkpoint, built once per config and cached (``Cache.get_or_create("testbed_model", ...)``), so the rest of
kaft never needs to know the model is synthetic.

Tokenizer: word level (every entity/value/template word is one token, punctuation is split off, letters A-Z are
tokens), so ``" A"`` is one token and ``ids(prompt + " A") == ids(prompt) + ids(" A")`` - the split lm-eval and
kaft's training rely on. By default it prepends ``<s>`` like Llama tokenizers. Decoding joins words with spaces
(newlines are not restored).

Model: ``LlamaForCausalLM`` with head_dim 64 (what the vLLM backend needs), trained with AdamW at a high learning
rate on whole documents packed into short rows. The defaults fit the ~90 s CPU budget (see kaft.testbed.report).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Mapping

from kaft.cache import Cache, make_key
from kaft.prompts import LETTERS
from kaft.testbed.world import World, WorldConfigError, build_world, resolve_config

log = logging.getLogger(__name__)

VERSION = "1"  # bump when anything here changes what a build produces (it is part of the cache key)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PUNCT = list(".,:;?!'\"()-/")


# ----------------------------------------------------------------------------------------------- tokenizer
def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def vocabulary(world: World) -> list[str]:
    """Specials, letters, digits, punctuation, then every word of every text the model is shown (sorted)."""
    pre = _pre_tokenizer()
    words: set[str] = set()
    for text in world.prompt_texts():
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    fixed = SPECIALS + list(LETTERS) + list("0123456789") + PUNCT
    return fixed + sorted(words - set(fixed))


def build_tokenizer(world: World, max_length: int = 1024):
    """A word-level fast tokenizer over the world's vocabulary (``<s>`` prepended by default)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = _pre_tokenizer()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_length)


# ----------------------------------------------------------------------------------------------- model
MODEL_KEYS = {"hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings",
              "rope_theta", "tie_word_embeddings"}
PRETRAIN_KEYS = {"precision", "steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "betas",
                 "grad_clip", "bos_drop", "threads", "log_every"}


def _check(section: Mapping, allowed: set[str], name: str) -> None:
    bad = set(section) - allowed
    if bad:
        raise WorldConfigError(f"testbed config: unknown key(s) {sorted(bad)} in '{name}' (known: {sorted(allowed)})")


def llama_config(m: Mapping, tok):
    from transformers import LlamaConfig

    hidden, heads = int(m["hidden_size"]), int(m["num_heads"])
    if hidden != 64 * heads:
        raise WorldConfigError(f"testbed model: hidden_size ({hidden}) must be 64 x num_heads ({heads}): "
                               f"head_dim 64 is what the vLLM backend supports")
    return LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(m["intermediate_size"]),
                       num_hidden_layers=int(m["num_layers"]), num_attention_heads=heads, num_key_value_heads=heads,
                       head_dim=64, max_position_embeddings=int(m["max_position_embeddings"]),
                       rope_theta=float(m["rope_theta"]), tie_word_embeddings=bool(m["tie_word_embeddings"]),
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _rows(docs: list[list[int]], seq_len: int, rng: random.Random, bos: int, eos: int, bos_drop: float):
    """One epoch of training rows: shuffled whole documents (``<s> doc </s>``, ``<s>`` sometimes left out, as
    prompts may come without it) packed greedily into rows of ``seq_len``; no document is cut."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    rows, cur = [], []
    for i in order:
        d = ([] if rng.random() < bos_drop else [bos]) + docs[i][: seq_len - 2] + [eos]
        if len(cur) + len(d) > seq_len:
            rows.append(cur)
            cur = []
        cur = cur + d
    if cur:
        rows.append(cur)
    rng.shuffle(rows)
    return rows


def _use_bf16(precision: str) -> bool:
    """bf16 autocast (fp32 master weights) where the CPU has fast bf16 kernels: ~1.7x faster on AVX512-BF16."""
    import torch

    if precision not in ("auto", "bf16", "fp32"):
        raise WorldConfigError(f"testbed pretrain.precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return precision == "bf16"


def pretrain(world: World, tok, cfg: Mapping, progress: bool = True, callback=None):
    """Train a fresh LlamaForCausalLM on the world's corpus; returns ``(model, stats)``.

    ``callback(step, model)``, if given, runs after every logged step (diagnostics; not part of the build)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    m, p, seed = cfg["model"], cfg["pretrain"], int(cfg["seed"])
    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(m, tok))
    model.train()
    seq_len, bsz, steps = int(p["seq_len"]), int(p["batch_size"]), int(p["steps"])
    docs = tok(world.corpus(), add_special_tokens=False)["input_ids"]
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "embed" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(p["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(p["lr"]),
                            betas=tuple(float(b) for b in p["betas"]), eps=1e-8)
    warm, floor = int(p["warmup_steps"]), float(p["min_lr_ratio"])

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    bf16 = _use_bf16(str(p["precision"]))
    rng = random.Random(f"kaft-testbed|{seed}|pretrain")
    rows: list[list[int]] = []
    epoch, tokens, t0, losses = 0, 0, time.time(), []
    bar = tqdm(range(steps), desc="testbed pretrain", disable=not progress, mininterval=2)
    for step in bar:
        while len(rows) < bsz:
            rows += _rows(docs, seq_len, rng, tok.bos_token_id, tok.eos_token_id, float(p["bos_drop"]))
            epoch += 1
        batch, rows = rows[:bsz], rows[bsz:]
        width = max(len(r) for r in batch)
        ids = torch.full((bsz, width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((bsz, width), -100, dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = ids[i, : len(r)]
        tokens += sum(len(r) for r in batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(p["grad_clip"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % int(p["log_every"]) == 0 or step + 1 == steps:
            avg = sum(losses[-int(p["log_every"]):]) / len(losses[-int(p["log_every"]):])
            bar.set_postfix(loss=f"{avg:.3f}", epoch=epoch)
            log.info("testbed pretrain step %d/%d loss %.3f (epoch %d, %.0fs)", step + 1, steps, avg, epoch,
                     time.time() - t0)
            if callback is not None:
                model.eval()
                callback(step + 1, model)
                model.train()
    model.eval()
    stats = {"steps": steps, "epochs": epoch, "tokens": tokens, "seconds": time.time() - t0,
             "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
             "parameters": sum(q.numel() for q in model.parameters())}
    return model, stats


def build_into(out_dir: str | Path, cfg: Mapping | None = None, progress: bool = True) -> dict:
    """World + tokenizer + pretraining, saved into ``out_dir`` (model, tokenizer, ``testbed.json``)."""
    t0 = time.time()
    full = resolve_config(cfg)
    _check(full["model"], MODEL_KEYS, "model")
    _check(full["pretrain"], PRETRAIN_KEYS, "pretrain")
    world = build_world(full)
    tok = build_tokenizer(world, int(full["model"]["max_position_embeddings"]))
    log.info("testbed world: %d facts, %d documents, vocabulary %d", len(world.facts), len(world.corpus()), len(tok))
    model, stats = pretrain(world, tok, full, progress)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stats = {**stats, "build_seconds": time.time() - t0, "vocab_size": len(tok), "version": VERSION}
    (out / "testbed.json").write_text(json.dumps({"config": full, "stats": stats}, indent=2))
    log.info("testbed model built in %.1fs (%d steps, %.0f tokens/s)", stats["build_seconds"], stats["steps"],
             stats["tokens"] / max(stats["seconds"], 1e-9))
    return stats


def model_key(cfg: Mapping | None = None) -> str:
    return make_key(resolve_config(cfg), VERSION)


def build_model(cfg: Mapping | None, cache_root: str, progress: bool = True) -> Path:
    """The directory of the pretrained testbed model for ``cfg`` (built on first use, then cached)."""
    full = resolve_config(cfg)
    hit = Cache(cache_root).get_or_create("testbed_model", model_key(full),
                                          lambda d: build_into(d, full, progress), meta={"version": VERSION})
    return hit.path
