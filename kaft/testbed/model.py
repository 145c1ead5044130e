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
MODEL_KEYS = {"binding", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings",
              "rope_theta", "tie_word_embeddings"}
PRETRAIN_KEYS = {"answer_weight", "precision", "steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "betas",
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


# ----------------------------------------------------------------------------------------------- binding heads
# Tiny models trained for ~1 minute do not discover multiple-choice *symbol binding* (find the option equal to a
# value, emit the letter in front of it): on minimal synthetic versions of the task a 4-layer Llama stays at chance
# for thousands of steps (content matching in attention is a known plateau, Boix-Adsera et al., ICLR 2024). So two
# attention heads are built in and frozen during pretraining; everything else - every fact, and recalling the
# remembered value at "Answer:" - is learned from the corpus. The saved model is a plain LlamaForCausalLM.
#
# Residual layout (the first ``_fixed_dims`` dimensions of every token embedding are fixed):
#   0                 bias: the same value in every token (gives the two heads position-only queries/keys)
#   1 .. n            letter one-hots of the option letters A.. (letter tokens only)
#   n+1 .. 2n         "my option letter", written by head P at option-value tokens
#   2n+1 .. 2n+c      a fixed code per value word (orthonormal within a relation's pool)
# Head P (layer 0, head 0): attends from every token to the token 2 back (RoPE positions only) and copies its
#   letter one-hot: an option value ("B . Belmora") learns which letter it stands under.
# Head M (last layer, head 0): from "Answer:" it scores the previous ~12 tokens by <recalled code, token code>
#   (RoPE pairs that hardly rotate over that distance) plus a fixed positional window, and writes the letter of the
#   best match onto the letter logits (tied embeddings). Recalling the code is what pretraining has to learn; the
#   corpus' "Question: ... Answer: <value>." statements teach it directly.

def _rope_fit(theta, target: str, iters: int, seed: int):
    """Amplitudes/phases of sum_i A_i cos(theta_i d + phi_i) (the RoPE score between a constant query and key at
    distance d) shaped as ``target``: "prev2" = a sharp peak at d=2, "window" = flat on d in [2, 11], low elsewhere."""
    import torch

    g = torch.Generator().manual_seed(seed)
    th = theta.double()
    d = torch.arange(1024, dtype=torch.float64)
    amp = (torch.ones(len(th), dtype=torch.float64) + 0.01 * torch.rand(len(th), generator=g, dtype=torch.float64))
    phi = (-2 * th).clone() if target == "prev2" else torch.zeros(len(th), dtype=torch.float64)
    amp.requires_grad_(True)
    phi.requires_grad_(True)
    opt = torch.optim.Adam([amp, phi], lr=0.2)
    inside = (d >= 2) & (d <= 11)
    outside = ~inside & (d != 12)
    for _ in range(iters):
        s = (amp[:, None] * torch.cos(th[:, None] * d[None, :] + phi[:, None])).sum(0) / 8
        if target == "prev2":
            loss = -sum(torch.log_softmax(s[: q + 1], 0)[2] for q in (2, 3, 5, 8, 13, 30, 100, 300, 1023))
        else:
            top = s[inside]
            loss = 10 * ((top - top.mean()) ** 2).sum() + torch.nn.functional.softplus(
                s[outside] - top.mean() + 10).sum() / 10
        loss = loss + 1e-5 * (amp ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return amp.detach().float(), phi.detach().float()


def _pair_vectors(amp, phi, pairs, head_dim: int = 64):
    """Query/key head vectors whose RoPE score at distance d is sum A_i cos(theta_i d + phi_i) over ``pairs``."""
    import torch

    q, k = torch.zeros(head_dim), torch.zeros(head_dim)
    half = head_dim // 2
    for j, i in enumerate(pairs):
        r = float(amp[j]).__abs__() ** 0.5
        a = float(phi[j]) + (0.0 if float(amp[j]) >= 0 else math.pi)
        # score = Re(zq * conj(zk) * e^{i theta d}); zk = r, zq = r e^{i a}
        q[i], q[i + half] = r * math.cos(a), r * math.sin(a)
        k[i], k[i + half] = r, 0.0
    return q, k


def install_binding_heads(model, tok, world: World, b: Mapping, seed: int):
    """Write the fixed embedding dimensions and heads P and M into ``model``; returns ``restore()``, which puts the
    fixed values back (called after every optimiser step, so training never moves them)."""
    import torch

    cfg = model.config
    H, hd = cfg.hidden_size, cfg.head_dim
    n, c = int(b["letters"]), int(b["code_dims"])
    fixed = 1 + 2 * n + c
    if fixed + 16 > H:
        raise WorldConfigError(f"testbed model: hidden_size {H} leaves no room next to the {fixed} fixed binding "
                               f"dimensions; raise hidden_size or lower binding.code_dims")
    half = hd // 2
    if c % 2 or c // 2 > half - 12:
        raise WorldConfigError(f"testbed binding.code_dims must be even and <= {2 * (half - 12)}")
    L_IN, L_OUT, C = 1, 1 + n, 1 + 2 * n
    g = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    vocab = tok.get_vocab()
    with torch.no_grad():
        # the learned dimensions start at about the norm of the fixed ones, so RMSNorm does not drown them
        emb[:, fixed:] = torch.randn(emb.shape[0], H - fixed, generator=g) * float(b["free_init"]) / (H - fixed) ** 0.5
        emb[:, :fixed] = 0.0
        emb[:, 0] = float(b["bias"])
        for j, letter in enumerate(LETTERS[:n]):
            emb[vocab[letter], L_IN + j] = float(b["letter"])
        for rel in sorted(world.pools):
            pool = world.pools[rel]
            basis, _ = torch.linalg.qr(torch.randn(c, max(c, len(pool)), generator=g))
            for v, vec in zip(pool, basis.T[: len(pool)] if len(pool) <= c else torch.randn(len(pool), c, generator=g)):
                emb[vocab[v], C:C + c] = float(b["code"]) * vec / vec.norm()
    theta = model.model.rotary_emb.inv_freq.detach().float().cpu()
    n_pos = half - c // 2  # fast RoPE pairs carry positions; the c/2 slowest pairs (both halves) the code match
    # typical normalised bias (RMSNorm of an embedding): the fixed heads' query/key scale divides by it
    with torch.no_grad():
        b0 = float((emb[:, 0] / emb.pow(2).mean(-1).sqrt()).median())
    ampP, phiP = _rope_fit(theta, "prev2", int(b["fit_iters"]), seed)
    qP, kP = _pair_vectors(ampP, phiP, list(range(half)), hd)
    ampW, phiW = _rope_fit(theta[:n_pos], "window", int(b["fit_iters"]), seed + 1)
    ampW, phiW = ampW * float(b["window_gain"]), phiW
    qW, kW = _pair_vectors(ampW, phiW, list(range(n_pos)), hd)
    code_dims_head = [i for i in range(n_pos, half)] + [i + half for i in range(n_pos, half)]
    layers = model.model.layers
    frozen: list[tuple] = []
    with torch.no_grad():
        a = layers[0].self_attn  # head P: rows 0..hd of q/k/v, columns 0..hd of o
        a.q_proj.weight[:hd] = 0.0
        a.k_proj.weight[:hd] = 0.0
        a.v_proj.weight[:hd] = 0.0
        a.o_proj.weight[:, :hd] = 0.0
        a.q_proj.weight[:hd, 0] = qP / b0
        a.k_proj.weight[:hd, 0] = kP / b0
        for j in range(n):
            a.v_proj.weight[j, L_IN + j] = 1.0
            a.o_proj.weight[L_OUT + j, j] = float(b["p_gain"])
        m = layers[-1].self_attn  # head M
        m.q_proj.weight[:hd] = 0.0
        m.k_proj.weight[:hd] = 0.0
        m.v_proj.weight[:hd] = 0.0
        m.o_proj.weight[:, :hd] = 0.0
        m.q_proj.weight[:hd, 0] = qW / b0
        m.k_proj.weight[:hd, 0] = kW / b0
        for j, h in enumerate(code_dims_head):
            m.q_proj.weight[h, C + j] = float(b["match_scale"])
            m.k_proj.weight[h, C + j] = float(b["match_scale"])
        for j in range(n):
            m.v_proj.weight[j, L_OUT + j] = 1.0
            m.o_proj.weight[L_IN + j, j] = float(b["m_gain"])
    for lin, sl in ((a.q_proj, (slice(0, hd), slice(None))), (a.k_proj, (slice(0, hd), slice(None))),
                    (a.v_proj, (slice(0, hd), slice(None))), (a.o_proj, (slice(None), slice(0, hd))),
                    (m.q_proj, (slice(0, hd), slice(None))), (m.k_proj, (slice(0, hd), slice(None))),
                    (m.v_proj, (slice(0, hd), slice(None))), (m.o_proj, (slice(None), slice(0, hd))),
                    (model.get_input_embeddings(), (slice(None), slice(0, fixed)))):
        frozen.append((lin.weight, sl, lin.weight.detach()[sl].clone()))

    def restore():
        with torch.no_grad():
            for w, sl, val in frozen:
                w[sl] = val

    def zero_grads():
        for w, sl, _ in frozen:
            if w.grad is not None:
                w.grad[sl] = 0.0

    restore.zero_grads = zero_grads
    return restore



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
    restore = None
    if m["binding"]["enabled"]:
        restore = install_binding_heads(model, tok, world, m["binding"], seed)
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
    aw = float(p["answer_weight"])
    ans_id, colon_id = tok.convert_tokens_to_ids("Answer"), tok.convert_tokens_to_ids(":")
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
            logits = model(input_ids=ids).logits[:, :-1].float()
        tgt = labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                               ignore_index=-100, reduction="none").view_as(tgt)
        wts = (tgt != -100).float()
        if aw != 1.0:  # the answer letter after "Answer :" weighs more: it is what the MC format is about
            is_ans = (ids[:, :-2] == ans_id) & (ids[:, 1:-1] == colon_id)
            wts[:, 1:] = torch.where(is_ans, wts[:, 1:] * aw, wts[:, 1:])
        loss = (ce * wts).sum() / (tgt != -100).sum()
        loss.backward()
        if restore is not None:
            restore.zero_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(p["grad_clip"]))
        opt.step()
        if restore is not None:
            restore()
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
