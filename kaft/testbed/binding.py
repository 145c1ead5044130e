"""The multiple-choice binding heads built into the testbed model.

Tiny models trained for a minute do not discover multiple-choice *symbol binding* (find the option equal to a
value, emit the letter in front of it): on minimal synthetic versions of the task a 4-layer Llama stays at chance
for thousands of steps, even with the answer letter as its only loss (content matching in attention is a known
plateau; Boix-Adsera et al., "When can transformers reason with abstract symbols?", ICLR 2024). So three attention
heads are built in and kept fixed during pretraining; everything else - every fact, and recalling it after a
question - is learned from the corpus. The saved model is a plain LlamaForCausalLM (untied embeddings).

Reserved residual dimensions (n option letters, c code dimensions):
  BIAS  (1)  the same value in every input embedding: position-only queries/keys for heads P and R
  QMARK (1)  set in the input embedding of "?"
  L_IN  (n)  letter one-hots: input embedding and lm_head row of A, B, ...
  L_OUT (n)  "the letter I stand under", written by head P
  C     (c)  output code: a value word's lm_head row is its fixed code (orthonormal within a relation's pool) and
             nothing else, so predicting a value - e.g. after "Question: <q>" in the corpus' quiz statements
             "Question: <q> <value>." - means writing its code here
  K     (c)  key code: the same code in the value word's input embedding
  Q     (c)  the code recalled after the last question, copied to later tokens by head R
Head P (layer 0, head 0): every token attends to the token 2 back (RoPE, positions only) and copies its letter
  one-hot: in "B . Belmora" the option value learns it stands under B.
Head R (layer -2, head 0): every token attends to the most recent "?" and copies its C part into Q.
Head M (layer -1, head 0): query Q, keys K + Q (slowest RoPE pairs: no position effect over a question): at
  "Answer:" it finds the option equal to the recalled value and writes that option's L_OUT onto L_IN, which the
  letters' lm_head rows read. A value the model does not remember matches no option: about uniform letters. The
  key's Q part (the code recalled at the key token's own latest "?") adds a same-question match: a k-shot
  demonstration whose options hold the recalled value does not draw head M away from the open question (v2
  lacked it; its 3-shot accuracy then hung on rounding: 0.43 or 0.81 on known facts by kernel family).
The RMSNorm gains of the reserved dimensions are held at 1, so the heads' scores are those written here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from kaft.prompts import LETTERS
from kaft.testbed.config import WorldConfigError
from kaft.testbed.world import World


def _fit_rope_profile(theta, kind: str, iters: int, seed: int, peak: float = 20.0):
    """Amplitudes/phases of s(d) = sum_i A_i cos(theta_i d + phi_i) / 8, the RoPE score between a constant query
    and a constant key d tokens apart: "prev2" peaks sharply at d = 2; "recent" decays as ``peak exp(-d / 40)``."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

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
            loss = loss + 1e-5 * (amp**2).sum()
        else:
            loss = (wt * (sc - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return amp.detach().float(), phi.detach().float()


def _pair_vectors(amp, phi, head_dim: int):
    """Query/key head vectors whose RoPE score at distance d is sum_i A_i cos(theta_i d + phi_i)."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    half = head_dim // 2
    q, k = torch.zeros(head_dim), torch.zeros(head_dim)
    for i in range(half):
        r, a = abs(float(amp[i])) ** 0.5, float(phi[i]) + (0.0 if float(amp[i]) >= 0 else math.pi)
        q[i], q[i + half] = r * math.cos(a), r * math.sin(a)  # score = Re(zq conj(zk) e^{i theta d}), zk = r
        k[i] = r
    return q, k


def binding_layout(b: Mapping) -> dict:
    """Where the reserved residual dimensions start (``F``: the first learned one) for a ``model.binding`` config."""
    n, c = int(b["letters"]), int(b["code_dims"])
    return {
        "BIAS": 0,
        "QMARK": 1,
        "L_IN": 2,
        "L_OUT": 2 + n,
        "C": 2 + 2 * n,
        "K": 2 + 2 * n + c,
        "Q": 2 + 2 * n + 2 * c,
        "F": 2 + 2 * n + 3 * c,
        "n": n,
        "c": c,
    }


def install_binding_heads(model, tok, world: World, b: Mapping, seed: int):
    """Write the reserved embedding dimensions and heads P, R and M into ``model``; returns ``restore()``, which puts
    the fixed values back (with ``restore.zero_grads()`` it runs around every optimiser step)."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    lay = binding_layout(b)
    _check_room(model.config, lay)
    g = torch.Generator().manual_seed(seed)
    vocab = tok.get_vocab()
    value_ids = sorted({vocab[v] for pool in world.pools.values() for v in pool})
    b0 = _write_embeddings(model, vocab, world, b, lay, value_ids, g)
    heads = _write_heads(model, b, lay, b0, seed)
    return _restorer(_fixed_entries(model, lay, value_ids, heads))


def _check_room(cfg, lay: Mapping) -> None:
    H, hd, F, c = cfg.hidden_size, cfg.head_dim, lay["F"], lay["c"]
    if F + 32 > H:
        raise WorldConfigError(
            f"testbed model: hidden_size {H} leaves too little room next to the {F} reserved "
            f"binding dimensions; raise hidden_size or lower model.binding.code_dims"
        )
    if c % 2 or c // 2 > hd // 2:
        raise WorldConfigError(f"testbed model.binding.code_dims must be even and <= {hd}")
    if cfg.num_hidden_layers < 3 or cfg.tie_word_embeddings:
        raise WorldConfigError("testbed model.binding needs num_layers >= 3 and tie_word_embeddings: false")


def _write_embeddings(
    model, vocab: Mapping[str, int], world: World, b: Mapping, lay: Mapping, value_ids: list[int], g
) -> float:
    """The reserved dimensions of the input embeddings and lm_head rows (bias, "?", letters, value codes); returns
    the typical RMS-normalised bias, which scales the position-only queries and keys."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    H, n, c, F = model.config.hidden_size, lay["n"], lay["c"], lay["F"]
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
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
                emb[vocab[v], lay["K"] : lay["K"] + c] = float(b["code"]) * code
                out[vocab[v], lay["C"] : lay["C"] + c] = float(b["code"]) * code
        return float((emb[:, 0] / emb.pow(2).mean(-1).sqrt()).median())


def _write_heads(model, b: Mapping, lay: Mapping, b0: float, seed: int) -> tuple:
    """Heads P, R and M (head 0 of layers 0, -2, -1) and unit RMSNorm gains on the reserved dimensions; returns the
    three attention modules."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    hd, nl, n, c = model.config.head_dim, model.config.num_hidden_layers, lay["n"], lay["c"]
    half = hd // 2
    theta = model.model.rotary_emb.inv_freq.detach().float().cpu()
    qP, kP = _pair_vectors(*_fit_rope_profile(theta, "prev2", int(b["fit_iters"]), seed), hd)
    qR, kR = _pair_vectors(*_fit_rope_profile(theta, "recent", int(b["fit_iters"]), seed + 1, float(b["r_peak"])), hd)
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
            norm.weight[: lay["F"]] = 1.0
    return P, R, M


def _fixed_entries(model, lay: Mapping, value_ids: list[int], heads: tuple) -> list[tuple]:
    """``(weight, index)`` of every entry held fixed: the reserved embedding dimensions, the value words' lm_head
    rows, the three heads, the reserved RMSNorm gains, and the learned layers' writes into reserved dimensions
    (zeroed here)."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    hd, nl, F, c = model.config.head_dim, model.config.num_hidden_layers, lay["F"], lay["c"]
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    rows, cols, allc = (slice(0, hd), slice(None)), (slice(None), slice(0, hd)), (slice(None), slice(0, F))
    fixed = [(emb, allc), (out, allc), (out, (torch.tensor(value_ids), slice(None)))]
    fixed += [(layer.input_layernorm.weight, slice(0, F)) for layer in model.model.layers]
    fixed += [(model.model.norm.weight, slice(0, F))]
    for att in heads:
        fixed += [
            (att.q_proj.weight, rows),
            (att.k_proj.weight, rows),
            (att.v_proj.weight, rows),
            (att.o_proj.weight, cols),
        ]
    # the learned parts never write the reserved dimensions (so the built-in heads read exactly what was put
    # there), except C before head R's layer: the value recalled after a question must be complete by then
    for li, layer in enumerate(model.model.layers):
        no_write = [d for d in range(F) if not (lay["C"] <= d < lay["C"] + c and li < nl - 2)]
        idx = torch.tensor(no_write)
        with torch.no_grad():
            layer.mlp.down_proj.weight[idx] = 0.0
            first_free = hd if li in (0, nl - 2, nl - 1) else 0
            layer.self_attn.o_proj.weight[idx, first_free:] = 0.0
        fixed += [
            (layer.mlp.down_proj.weight, (idx, slice(None))),
            (layer.self_attn.o_proj.weight, (idx, slice(first_free, None))),
        ]
    return fixed


def _restorer(fixed: list[tuple]):
    """``restore()`` puts the entries' current values back; ``restore.zero_grads()`` clears their gradients."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

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
