"""The testbed's tokenizer and tiny Llama, pretrained from scratch on the synthetic world's corpus on the CPU.

:func:`build_model` returns a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load like
any hub checkpoint, built once per config and cached (``Cache.get_or_create("testbed_model", ...)``), so the rest of
kaft never needs to know the model is synthetic.

Tokenizer: word level (every entity/value/template word is one token, punctuation is split off, letters A-Z are
tokens), so ``" A"`` is one token and ``ids(prompt + " A") == ids(prompt) + ids(" A")`` - the split lm-eval and
kaft's training rely on. By default it prepends ``<s>`` like Llama tokenizers. Decoding joins words with spaces
(newlines are not restored).

Model: ``LlamaForCausalLM`` with head_dim 64 (what the vLLM backend needs), untied embeddings, trained with AdamW at
a high learning rate on whole documents packed into short rows, in fp32 (bf16 autocast only with
``pretrain.precision: bf16``: the precision is configured, never chosen by the CPU). Three attention heads that bind
option letters to option values are built in and kept fixed (see "binding heads" below: a model this small cannot
learn that skill in the CPU budget); all knowledge is learned. After pretraining the matching head is weakened to a
calibrated gain (:func:`release_readout`) so that the released model, like a base LLM, answers below what it knows
and fine-tuning has a readout to restore. ``testbed.json`` beside the weights records the build's precision, torch
version and CPU kernel family (:func:`build_env`). Builds on different kernel families differ in rounding, and so in
their weights; the design keeps the targets (:func:`kaft.testbed.report.targets`) met on each
(``python -m kaft.testbed.matrix``).
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
from kaft.prompts import LETTERS, few_shot_prompt
from kaft.testbed.world import World, WorldConfigError, build_world, resolve_config

log = logging.getLogger(__name__)

VERSION = "3"  # bump when anything here changes what a build produces (it is part of the cache key)

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
# for thousands of steps, even with the answer letter as its only loss (content matching in attention is a known
# plateau; Boix-Adsera et al., "When can transformers reason with abstract symbols?", ICLR 2024). So three attention
# heads are built in and kept fixed during pretraining; everything else - every fact, and recalling it after a
# question - is learned from the corpus. The saved model is a plain LlamaForCausalLM (untied embeddings).
#
# Reserved residual dimensions (n option letters, c code dimensions):
#   BIAS  (1)  the same value in every input embedding: position-only queries/keys for heads P and R
#   QMARK (1)  set in the input embedding of "?"
#   L_IN  (n)  letter one-hots: input embedding and lm_head row of A, B, ...
#   L_OUT (n)  "the letter I stand under", written by head P
#   C     (c)  output code: a value word's lm_head row is its fixed code (orthonormal within a relation's pool) and
#              nothing else, so predicting a value - e.g. after "Question: <q>" in the corpus' quiz statements
#              "Question: <q> <value>." - means writing its code here
#   K     (c)  key code: the same code in the value word's input embedding
#   Q     (c)  the code recalled after the last question, copied to later tokens by head R
# Head P (layer 0, head 0): every token attends to the token 2 back (RoPE, positions only) and copies its letter
#   one-hot: in "B . Belmora" the option value learns it stands under B.
# Head R (layer -2, head 0): every token attends to the most recent "?" and copies its C part into Q.
# Head M (layer -1, head 0): query Q, keys K + Q (slowest RoPE pairs: no position effect over a question): at
#   "Answer:" it finds the option equal to the recalled value and writes that option's L_OUT onto L_IN, which the
#   letters' lm_head rows read. A value the model does not remember matches no option: about uniform letters. The
#   key's Q part (the code recalled at the key token's own latest "?") adds a same-question match: a k-shot
#   demonstration whose options hold the recalled value does not draw head M away from the open question (v2
#   lacked it; its 3-shot accuracy then hung on rounding: 0.43 or 0.81 on known facts by kernel family).
# The RMSNorm gains of the reserved dimensions are held at 1, so the heads' scores are those written here.

def _fit_rope_profile(theta, kind: str, iters: int, seed: int, peak: float = 20.0):
    """Amplitudes/phases of s(d) = sum_i A_i cos(theta_i d + phi_i) / 8, the RoPE score between a constant query
    and a constant key d tokens apart: "prev2" peaks sharply at d = 2; "recent" decays as ``peak exp(-d / 40)``."""
    import torch

    th = theta.double()
    d = torch.arange(1024, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    amp = (1 + 0.01 * torch.rand(len(th), generator=g, dtype=torch.float64)).requires_grad_(True)
    phi = (-2 * th if kind == "prev2" else 0 * th).clone().requires_grad_(True)
    opt = torch.optim.Adam([amp, phi], lr=0.1 if kind == "recent" else 0.2)
    target, wt = peak * torch.exp(-d / 40), torch.where(d < 250, 1.0, 0.2).double()
    for _ in range(iters):
        sc = (amp[:, None] * torch.cos(th[:, None] * d[None, :] + phi[:, None])).sum(0) / 8
        if kind != "recent":
            loss = -sum(torch.log_softmax(sc[: q + 1], 0)[2] for q in (2, 3, 5, 8, 13, 30, 100, 300, 1023))
            loss = loss + 1e-5 * (amp ** 2).sum()
        else:
            loss = (wt * (sc - target) ** 2).mean()
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
    lay = {"BIAS": 0, "QMARK": 1, "L_IN": 2, "L_OUT": 2 + n, "C": 2 + 2 * n, "K": 2 + 2 * n + c,
           "Q": 2 + 2 * n + 2 * c, "F": 2 + 2 * n + 3 * c, "n": n, "c": c}
    return lay


def install_binding_heads(model, tok, world: World, b: Mapping, seed: int):
    """Write the reserved embedding dimensions and heads P, R and M into ``model``; returns ``restore()``, which puts
    the fixed values back (with ``restore.zero_grads()`` it runs around every optimiser step)."""
    import torch

    cfg = model.config
    H, hd, nl = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers
    lay = binding_layout(b)
    n, c, F = lay["n"], lay["c"], lay["F"]
    half = hd // 2
    if F + 32 > H:
        raise WorldConfigError(f"testbed model: hidden_size {H} leaves too little room next to the {F} reserved "
                               f"binding dimensions; raise hidden_size or lower model.binding.code_dims")
    if c % 2 or c // 2 > half:
        raise WorldConfigError(f"testbed model.binding.code_dims must be even and <= {hd}")
    if nl < 3 or cfg.tie_word_embeddings:
        raise WorldConfigError("testbed model.binding needs num_layers >= 3 and tie_word_embeddings: false")
    g = torch.Generator().manual_seed(seed)
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    vocab = tok.get_vocab()
    value_ids = sorted({vocab[v] for pool in world.pools.values() for v in pool})
    with torch.no_grad():
        # learned dimensions start at about the norm of the reserved ones, so RMSNorm does not drown them
        emb[:, F:] = torch.randn(emb.shape[0], H - F, generator=g) * float(b["free_init"]) / (H - F) ** 0.5
        emb[:, :F] = 0.0
        out[:, :F] = 0.0
        out[value_ids] = 0.0
        emb[:, lay["BIAS"]] = float(b["bias"])
        emb[vocab["?"], lay["QMARK"]] = float(b["bias"])
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
    qP, kP = _pair_vectors(*_fit_rope_profile(theta, "prev2", int(b["fit_iters"]), seed), hd)
    qR, kR = _pair_vectors(*_fit_rope_profile(theta, "recent", int(b["fit_iters"]), seed + 1,
                                              float(b["r_peak"])), hd)
    slow = list(range(half - c // 2, half))  # the slowest RoPE pairs barely rotate over a question's length
    content = slow + [i + half for i in slow]
    P, R, M = (model.model.layers[i].self_attn for i in (0, nl - 2, nl - 1))
    with torch.no_grad():
        for att in (P, R, M):
            for lin in (att.q_proj, att.k_proj, att.v_proj):
                lin.weight[:hd] = 0.0
            att.o_proj.weight[:, :hd] = 0.0
        P.q_proj.weight[:hd, lay["BIAS"]] = qP / b0
        P.k_proj.weight[:hd, lay["BIAS"]] = kP / b0
        R.q_proj.weight[:hd, lay["BIAS"]] = qR / b0
        R.k_proj.weight[:hd, lay["QMARK"]] = kR / b0
        for j in range(n):
            P.v_proj.weight[j, lay["L_IN"] + j] = 1.0
            P.o_proj.weight[lay["L_OUT"] + j, j] = float(b["p_gain"])
            M.v_proj.weight[j, lay["L_OUT"] + j] = 1.0
            M.o_proj.weight[lay["L_IN"] + j, j] = float(b["m_gain"])
        for j in range(c):
            R.v_proj.weight[j, lay["C"] + j] = 1.0
            R.o_proj.weight[lay["Q"] + j, j] = float(b["r_gain"])
        for j, h in enumerate(content):
            M.q_proj.weight[h, lay["Q"] + j] = float(b["match_scale"])
            M.k_proj.weight[h, lay["K"] + j] = float(b["match_scale"])
            # same-question match: a token's own Q is the code recalled at *its* latest "?", so the open
            # question's options (whose Q equals the query's) outscore a demonstration's options that hold
            # the same value; without it a k-shot prompt splits head M between the two
            M.k_proj.weight[h, lay["Q"] + j] = float(b["match_scale"]) * float(b["block_match"])
        # RMSNorm gains of the reserved dimensions stay 1: learned gains there rescaled the built-in heads' scores
        # (head R's by 0.3 in one build), which made few-shot reading depend on rounding
        for norm in [layer.input_layernorm for layer in model.model.layers] + [model.model.norm]:
            norm.weight[:F] = 1.0
    rows, cols, allc = (slice(0, hd), slice(None)), (slice(None), slice(0, hd)), (slice(None), slice(0, F))
    fixed = [(emb, allc), (out, allc), (out, (torch.tensor(value_ids), slice(None)))]
    fixed += [(layer.input_layernorm.weight, slice(0, F)) for layer in model.model.layers]
    fixed += [(model.model.norm.weight, slice(0, F))]
    for att in (P, R, M):
        fixed += [(att.q_proj.weight, rows), (att.k_proj.weight, rows), (att.v_proj.weight, rows),
                  (att.o_proj.weight, cols)]
    # the learned parts never write the reserved dimensions (so the built-in heads read exactly what was put
    # there), except C before head R's layer: the value recalled after a question must be complete by then
    for li, layer in enumerate(model.model.layers):
        no_write = [d for d in range(F) if not (lay["C"] <= d < lay["C"] + c and li < nl - 2)]
        idx = torch.tensor(no_write)
        with torch.no_grad():
            layer.mlp.down_proj.weight[idx] = 0.0
            first_free = hd if li in (0, nl - 2, nl - 1) else 0
            layer.self_attn.o_proj.weight[idx, first_free:] = 0.0
        fixed += [(layer.mlp.down_proj.weight, (idx, slice(None))),
                  (layer.self_attn.o_proj.weight, (idx, slice(first_free, None)))]
    frozen = [(w, sl, w.detach()[sl].clone()) for w, sl in fixed]

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


def readout_accuracy(model, tok, items, gain: float, b: Mapping) -> float:
    """0-shot accuracy on ``items`` with head M's output gain set to ``gain`` (the model is left at that gain)."""
    from kaft.testbed.accuracy import accuracy_by_kind

    set_readout_gain(model, gain, b)
    return accuracy_by_kind(model, tok, items, batch_size=64)["all"]  # the batching the released gain was fit with


def _readout_rows(model, b: Mapping):
    lay = binding_layout(b)
    return model.model.layers[-1].self_attn.o_proj.weight[lay["L_IN"]:lay["L_IN"] + lay["n"], :model.config.head_dim]


def readout_gain(model, b: Mapping) -> float:
    """Head M's current output gain (the weight with which it writes the matched option's letter)."""
    return float(_readout_rows(model, b).detach().diagonal().mean())


def set_readout_gain(model, gain: float, b: Mapping) -> None:
    """Rescale head M's output (the letter it writes) to ``gain``."""
    import torch

    current = readout_gain(model, b)
    with torch.no_grad():
        _readout_rows(model, b).mul_(gain / current)


def release_readout(model, tok, world: World, b: Mapping) -> float:
    """Weaken head M in the model that is saved so that its 0-shot accuracy on well-known *format* facts is
    ``release_accuracy``; returns the gain (``m_gain`` when ``release_accuracy`` is None).

    Pretraining needs the strong gain (at 1.5 the learned layers never come to use the binding). The released
    model answers with a weaker one: its multiple-choice readout uses less of what it knows, as a base LLM does
    before instruction tuning, so fine-tuning has something to restore - and how much it restores depends on
    whether the training answers agree with what the model recalls (the knowledge conflict). The gain is found by
    bisection on format facts (in no split), so the headroom is the same whatever the seed."""
    target = b.get("release_accuracy")
    if target is None:
        return float(b["m_gain"])
    items = world.format_items(256)
    lo, hi = 0.0, float(b["m_gain"])
    for _ in range(12):
        mid = (lo + hi) / 2
        if readout_accuracy(model, tok, items, mid, b) < float(target):
            lo = mid
        else:
            hi = mid
    set_readout_gain(model, hi, b)
    return hi


def letter_confidence(model, tok, items) -> float:
    """Mean probability of the top option letter (softmax at T = 1 over the option letters) on 0-shot ``items``."""
    from kaft.testbed.accuracy import letter_probs

    prompts = [few_shot_prompt([], it.question, it.options, it.domain or "general") for it in items]
    p = letter_probs(model, tok, prompts, batch_size=64)
    return float((p / p.sum(-1, keepdim=True)).max(-1).values.mean())


def calibrate_letters(model, tok, world: World, b: Mapping) -> float:
    """Scale the option letters' output rows so that the released model is *calibrated* on format facts: its mean
    confidence (top letter probability, T = 1) equals its accuracy, ``release_accuracy``; returns the scale.

    Weakening head M alone leaves a model that is right 75 % of the time but 41 % sure - flatter than pretrained LLMs,
    which are calibrated on multiple choice (GPT-4 technical report, Fig. 8). Sampled at T = 0.7, such a flat model
    puts a contradicted fact only a little below chance (Score 0.19 vs 0.25), so which items probing flags hung on
    sampling noise. Scaling the letters' logits changes no argmax: the release accuracy stays as calibrated."""
    import torch

    target = float(b["release_accuracy"])
    items = world.format_items(256)
    letters = [tok.convert_tokens_to_ids(c) for c in LETTERS[: int(b["letters"])]]
    rows = model.get_output_embeddings().weight
    base = rows.detach()[letters].clone()

    def conf_at(scale: float) -> float:
        with torch.no_grad():
            rows[letters] = base * scale
        return letter_confidence(model, tok, items)

    lo, hi = 1.0, 1.0
    while conf_at(hi) < target and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if conf_at(mid) < target else (lo, mid)
    conf_at(hi)
    return hi


def _rows(docs: list[tuple[list[int], list[int]]], seq_len: int, rng: random.Random, bos: int, eos: int,
          bos_drop: float):
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


def _use_bf16(precision: str) -> bool:
    """bf16 autocast (fp32 master weights) only when asked for: the precision is part of the config (and so of the
    cache key), never chosen by the CPU, so one config builds one model family on every machine."""
    if precision == "auto":
        raise WorldConfigError("testbed pretrain.precision 'auto' was removed: it chose bf16 or fp32 by CPU, so "
                               "the same command built different models on different machines; use fp32 "
                               "(default) or bf16")
    if precision not in ("bf16", "fp32"):
        raise WorldConfigError(f"testbed pretrain.precision must be fp32 or bf16, got {precision!r}")
    return precision == "bf16"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """One line for measured numbers: which CPU, whether it has AVX-512 BF16, which kernels torch dispatches to."""
    import os

    import torch

    bf16 = "AVX-512 BF16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no AVX-512 BF16"
    return (f"{cpu_name()}, {os.cpu_count()} cores, {bf16}, torch {torch.__version__} "
            f"{torch.backends.cpu.get_cpu_capability()} kernels")


def build_env() -> dict:
    """What the numbers of a build depend on besides its config: torch, the kernel family PyTorch dispatched to
    (``ATEN_CPU_CAPABILITY`` forces it), the BLAS / oneDNN pins and the thread count (recorded in testbed.json)."""
    import os
    import platform

    import torch

    return {"cpu": cpu_name(), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            **{k.lower(): os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}}


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
    qmark = tok.convert_tokens_to_ids("?")
    docs = [(d, _labels(d, i >= len(world.paragraphs), qmark))
            for i, d in enumerate(tok(world.corpus(), add_special_tokens=False)["input_ids"])]
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
    rnorm = float(p["residual_penalty"]) if m["binding"]["enabled"] else 0.0
    rng = random.Random(f"kaft-testbed|{seed}|pretrain")
    rows: list[tuple[list[int], list[int]]] = []
    epoch, tokens, t0, losses = 0, 0, time.time(), []
    bar = tqdm(range(steps), desc="testbed pretrain", disable=not progress, mininterval=2)
    for step in bar:
        while len(rows) < bsz:
            rows += _rows(docs, seq_len, rng, tok.bos_token_id, tok.eos_token_id, float(p["bos_drop"]))
            epoch += 1
        batch, rows = rows[:bsz], rows[bsz:]
        width = max(len(r) for r, _ in batch)
        ids = torch.full((bsz, width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((bsz, width), -100, dtype=torch.long)
        for i, (r, t) in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(t)] = torch.tensor(t)
        tokens += sum(len(r) for r, _ in batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, labels=labels, output_hidden_states=rnorm > 0)
        loss = out.loss.float()
        if rnorm > 0:  # keep the residual stream near the scale of the embeddings: the built-in heads read
            #             fixed-size signals from it, which a residual grown 50x would drown
            rms = torch.stack([h.float().pow(2).mean(-1).sqrt() for h in out.hidden_states[1:-1]])
            loss = loss + rnorm * torch.relu(rms - float(p["residual_max"])).pow(2).mean()
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
             "precision": "bf16" if bf16 else "fp32", "build_env": build_env(),
             "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
             "parameters": sum(q.numel() for q in model.parameters())}
    return model, stats


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
        log.info("testbed readout: head M gain %.3g, letter scale %.3g (0-shot accuracy on format facts %s)",
                 stats["release_m_gain"], stats.get("release_letter_scale", 1.0), b["release_accuracy"])
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
