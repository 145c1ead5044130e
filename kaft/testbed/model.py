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
# Tiny models trained for a minute do not discover multiple-choice *symbol binding* (find the option equal to a
# value, emit the letter in front of it): on minimal synthetic versions of the task a 4-layer Llama stays at chance
# for thousands of steps, even with the answer as its only loss (content matching in attention is a known plateau,
# Boix-Adsera et al., "When can transformers reason with abstract symbols?", ICLR 2024). So two attention heads are
# built in and kept fixed during pretraining; everything else - every fact, and recalling the remembered value at
# "Answer:" - is learned from the corpus. The saved model is a plain LlamaForCausalLM (untied embeddings).
#
# Residual dimensions 0 .. F-1 are reserved (n letters, c code dimensions):
#   0            bias: the same value in every input embedding (gives head P a position-only query and key)
#   L_IN  (n)    letter one-hots: input embedding of A, B, ... and output embedding (lm_head row) of A, B, ...
#   L_OUT (n)    "the letter I stand under", written by head P
#   C     (c)    output code: the lm_head row of every value word holds a fixed code (orthonormal within a pool),
#                so predicting a value (as "Question: ... Answer: <value>." statements train) writes its code here
#   K     (c)    key code: the same code in the *input* embedding of the value word
# Head P (layer 0, head 0): attends from every token to the token 2 back (RoPE positions only, fitted below) and
#   copies its letter one-hot: an option value ("B . Belmora") knows it stands under B.
# Head M (last layer, head 0): query = the residual's C part (the recalled value), key = the K part (the value
#   words in the context), matched on the slowest RoPE pairs; it copies L_OUT of the best match onto L_IN, which
#   the lm_head rows of the letters read. A value the model does not remember matches no option: ~uniform letters.

def _fit_prev2(theta, iters: int, seed: int):
    """Amplitudes/phases of sum_i A_i cos(theta_i d + phi_i) (the RoPE score between a constant query and key d
    tokens apart) peaking sharply at d = 2 against every other distance up to 1023."""
    import torch

    th = theta.double()
    d = torch.arange(1024, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    amp = (1 + 0.01 * torch.rand(len(th), generator=g, dtype=torch.float64)).requires_grad_(True)
    phi = (-2 * th).clone().requires_grad_(True)
    opt = torch.optim.Adam([amp, phi], lr=0.2)
    for _ in range(iters):
        sc = (amp[:, None] * torch.cos(th[:, None] * d[None, :] + phi[:, None])).sum(0) / 8
        loss = -sum(torch.log_softmax(sc[: q + 1], 0)[2] for q in (2, 3, 5, 8, 13, 30, 100, 300, 1023))
        loss = loss + 1e-5 * (amp ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return amp.detach().float(), phi.detach().float()


def _pair_vectors(amp, phi, head_dim: int):
    """Query/key head vectors whose RoPE score at distance d is sum_i A_i cos(theta_i d + phi_i)."""
    import torch

    half = head_dim // 2
    q, k = torch.zeros(head_dim), torch.zeros(head_dim)
    for i in range(half):
        r, a = abs(float(amp[i])) ** 0.5, float(phi[i]) + (0.0 if float(amp[i]) >= 0 else math.pi)
        q[i], q[i + half] = r * math.cos(a), r * math.sin(a)  # score = Re(zq conj(zk) e^{i theta d}), zk = r
        k[i] = r
    return q, k


def binding_layout(b: Mapping) -> dict:
    n, c = int(b["letters"]), int(b["code_dims"])
    return {"L_IN": 1, "L_OUT": 1 + n, "C": 1 + 2 * n, "K": 1 + 2 * n + c, "F": 1 + 2 * n + 2 * c, "n": n, "c": c}


def install_binding_heads(model, tok, world: World, b: Mapping, seed: int):
    """Write the reserved embedding dimensions and heads P and M into ``model``; returns ``restore()``, which puts
    the fixed values back (with ``restore.zero_grads()`` it runs around every optimiser step)."""
    import torch

    cfg = model.config
    H, hd = cfg.hidden_size, cfg.head_dim
    lay = binding_layout(b)
    n, c, F = lay["n"], lay["c"], lay["F"]
    half = hd // 2
    if F + 32 > H:
        raise WorldConfigError(f"testbed model: hidden_size {H} leaves too little room next to the {F} reserved "
                               f"binding dimensions; raise hidden_size or lower model.binding.code_dims")
    if c % 2 or c // 2 > half:
        raise WorldConfigError(f"testbed model.binding.code_dims must be even and <= {hd}")
    if cfg.tie_word_embeddings:
        raise WorldConfigError("testbed model.binding needs tie_word_embeddings: false")
    g = torch.Generator().manual_seed(seed)
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    vocab = tok.get_vocab()
    with torch.no_grad():
        # learned dimensions start at about the norm of the reserved ones, so RMSNorm does not drown them
        emb[:, F:] = torch.randn(emb.shape[0], H - F, generator=g) * float(b["free_init"]) / (H - F) ** 0.5
        emb[:, :F] = 0.0
        out[:, :F] = 0.0
        emb[:, 0] = float(b["bias"])
        for j, letter in enumerate(LETTERS[:n]):
            emb[vocab[letter], lay["L_IN"] + j] = float(b["letter"])
            out[vocab[letter], lay["L_IN"] + j] = float(b["letter"])
        for rel in sorted(world.pools):
            pool = world.pools[rel]
            if len(pool) <= c:
                codes = torch.linalg.qr(torch.randn(c, c, generator=g))[0].T[: len(pool)]
            else:
                codes = torch.nn.functional.normalize(torch.randn(len(pool), c, generator=g), dim=-1)
            for v, code in zip(pool, codes):
                emb[vocab[v], lay["K"]:lay["K"] + c] = float(b["code"]) * code
                out[vocab[v], lay["C"]:lay["C"] + c] = float(b["code"]) * code
        b0 = float((emb[:, 0] / emb.pow(2).mean(-1).sqrt()).median())  # typical RMS-normalised bias
    theta = model.model.rotary_emb.inv_freq.detach().float().cpu()
    qP, kP = _pair_vectors(*_fit_prev2(theta, int(b["fit_iters"]), seed), hd)
    slow = list(range(half - c // 2, half))  # the slowest RoPE pairs barely rotate over a question's length
    content = slow + [i + half for i in slow]
    a, m = model.model.layers[0].self_attn, model.model.layers[-1].self_attn
    with torch.no_grad():
        for lin in (a.q_proj, a.k_proj, a.v_proj, m.q_proj, m.k_proj, m.v_proj):
            lin.weight[:hd] = 0.0
        a.o_proj.weight[:, :hd] = 0.0
        m.o_proj.weight[:, :hd] = 0.0
        a.q_proj.weight[:hd, 0] = qP / b0
        a.k_proj.weight[:hd, 0] = kP / b0
        for j, h in enumerate(content):
            m.q_proj.weight[h, lay["C"] + j] = float(b["match_scale"])
            m.k_proj.weight[h, lay["K"] + j] = float(b["match_scale"])
        for j in range(n):
            a.v_proj.weight[j, lay["L_IN"] + j] = 1.0
            a.o_proj.weight[lay["L_OUT"] + j, j] = float(b["p_gain"])
            m.v_proj.weight[j, lay["L_OUT"] + j] = 1.0
            m.o_proj.weight[lay["L_IN"] + j, j] = float(b["m_gain"])
    rows, cols, allc = (slice(0, hd), slice(None)), (slice(None), slice(0, hd)), (slice(None), slice(0, F))
    frozen = [(w, sl, w.detach()[sl].clone()) for w, sl in (
        (a.q_proj.weight, rows), (a.k_proj.weight, rows), (a.v_proj.weight, rows), (a.o_proj.weight, cols),
        (m.q_proj.weight, rows), (m.k_proj.weight, rows), (m.v_proj.weight, rows), (m.o_proj.weight, cols),
        (emb, allc), (out, allc))]

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
