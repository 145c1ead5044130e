"""GPU benchmark at real model sizes: ``python -m perf.gpu [--model llama3-8b] [--layers N] [--dry-run]``.

Random-init models of real shapes (bf16 weights, nothing downloaded), on one CUDA GPU:

* **LoRA training** through kaft's own step (:func:`kaft.train.sft_batch_loss`, ``loss=kaft``, LoRA r = 16 on all
  linear layers, AdamW on the adapter): tokens/s, peak ``torch.cuda.max_memory_allocated``, and MFU, defined as

      MFU = model FLOPs per step / step time / peak bf16 FLOP/s,
      model FLOPs per step = 6 * N_base * T  (forward 2 N T + backward 4 N T; N_base = the non-embedding parameters
                             of the frozen model incl. the LM head, T = tokens in the batch)
                             + 12 * n_layers * seq * d_model * T   (attention scores and values, fwd + bwd).

  With LoRA the weight gradients of the frozen matrices are skipped, so the *hardware* work is closer to
  4 N T; MFU is still quoted against 6 N T, the convention for comparing with full fine-tuning (``mfu_4n`` is the
  4 N T version). kaft computes logits only at label positions (``logits_to_keep``), so the LM head term is
  mostly not executed: that is why both are upper-bound style definitions.
* **Probing** (``detection.estimator=exact``: one prefill per prompt, no generation) through
  :class:`kaft.detection.HFBackend`: prompt tokens/s and the fraction of the prefill FLOP limit,
  ``2 * N_base * tokens / peak FLOP/s`` (attention FLOPs ignored; the KV-cache sharing of the 3-shot prefix makes the
  model do less than that, so the fraction can exceed 1 — it is reported against the unshared token count).

``--layers`` shrinks a config to its first N layers (same widths) to fit smaller GPUs or time budgets;
``--dry-run`` prints the planned configs, parameter counts and FLOP budgets and exits (no GPU needed). Without
CUDA and without ``--dry-run`` it exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

# real shapes (published configs); vocab is part of the LM head cost
MODELS = {
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "llama3-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1000000.0,
    ),
    "tiny": dict(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=32000,
        rope_theta=10000.0,
    ),
}
# dense bf16 peak (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("A6000", 155e12),
    ("V100", 125e12),
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shape(name: str, layers: int | None) -> dict:
    cfg = dict(MODELS[name])
    if layers:
        cfg["num_hidden_layers"] = min(int(layers), cfg["num_hidden_layers"])
    return cfg


def param_counts(cfg: dict, lora_r: int = 16) -> dict:
    """Parameter counts of a Llama-shape config: embedding, non-embedding (layers + LM head), LoRA adapter."""
    d, f, n_l, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]  # q k v o gate up down (in, out)
    per_layer = sum(a * b for a, b in shapes) + 2 * d
    lora = n_l * sum(lora_r * (a + b) for a, b in shapes)
    return {
        "embedding": v * d,
        "layers": n_l * per_layer,
        "lm_head": v * d,
        "non_embedding": n_l * per_layer + v * d + d,
        "lora": lora,
    }


def train_flops(cfg: dict, batch: int, seq: int) -> dict:
    p = param_counts(cfg)
    t = batch * seq
    attn = 12 * cfg["num_hidden_layers"] * seq * cfg["hidden_size"] * t  # QK^T and AV, fwd (4) + bwd (8)
    return {"6N": 6 * p["non_embedding"] * t + attn, "4N": 4 * p["non_embedding"] * t + attn, "tokens": t}


def peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, v in PEAK_BF16:
        if key in device_name:
            return v
    return None


def plan(args) -> list[dict]:
    out = []
    for name in args.model:
        cfg = shape(name, args.layers)
        p = param_counts(cfg)
        f = train_flops(cfg, args.batch, args.seq)
        out.append(
            {
                "model": name,
                "config": cfg,
                "params": p,
                "train_flops_per_step": f,
                "probe_prefill_flops": 2 * p["non_embedding"] * args.probe_items * args.probe_len,
                "weights_gib_bf16": (p["non_embedding"] + p["embedding"]) * 2 / 2**30,
            }
        )
    return out


def print_plan(plans: list[dict], args) -> None:
    print(
        f"planned: batch {args.batch} x seq {args.seq} (train), {args.probe_items} probe prompts of "
        f"~{args.probe_len} tokens (exact estimator), {args.steps} timed steps after {args.warmup} warm-up"
    )
    for pl in plans:
        c, p, f = pl["config"], pl["params"], pl["train_flops_per_step"]
        print(
            f"  {pl['model']}: layers {c['num_hidden_layers']}, hidden {c['hidden_size']}, ffn "
            f"{c['intermediate_size']}, heads {c['num_attention_heads']}/{c['num_key_value_heads']}, vocab "
            f"{c['vocab_size']} | params non-emb {p['non_embedding'] / 1e9:.2f} B, emb {p['embedding'] / 1e9:.2f} B, "
            f"LoRA {p['lora'] / 1e6:.1f} M | weights {pl['weights_gib_bf16']:.1f} GiB bf16 | train step "
            f"{f['6N'] / 1e12:.1f} TFLOP (6N) / {f['4N'] / 1e12:.1f} (4N) | probe prefill "
            f"{pl['probe_prefill_flops'] / 1e12:.1f} TFLOP"
        )


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def _build(cfg: dict, device: str = "cuda"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        **cfg,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = LlamaForCausalLM(conf).to(torch.bfloat16)
    return model


def bench_train(cfg: dict, args, peak: float | None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from kaft import train

    dev = args.device
    model = _build(cfg, dev)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, bias="none"
        ),
    )
    if args.grad_ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator(device=dev).manual_seed(0)
    ids = torch.randint(3, cfg["vocab_size"], (args.batch, args.seq), device=dev, generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -args.answer_tokens :] = ids[:, -args.answer_tokens :]
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "weights": torch.ones(args.batch, device=dev),
    }
    slice_logits = train.accepts_logits_to_keep(model)
    loss_cfg = {"name": "kaft", "alpha": 0.1, "beta": 0.5}
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss, _ = train.sft_batch_loss(model, batch, loss_cfg, slice_logits)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    f = train_flops(cfg, args.batch, args.seq)
    out = {
        "step_s": step,
        "tokens_s": f["tokens"] / step,
        "peak_gib": _peak_gib(dev),
        "mfu": f["6N"] / step / peak if peak else None,
        "mfu_4n": f["4N"] / step / peak if peak else None,
    }
    del model, opt
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_probe(cfg: dict, args, peak: float | None) -> dict:
    """Exact-estimator probing (one forward per prompt, last-position logits) through kaft's HFBackend."""
    import torch

    from kaft import detection

    dev = args.device
    model = _build(cfg, dev).eval()
    tok = _WordTokenizer(cfg["vocab_size"])
    rng = __import__("random").Random(0)
    demo = " ".join(f"w{rng.randrange(3, 1000)}" for _ in range(args.probe_len * 3 // 4))  # shared 3-shot prefix
    prompts = [
        demo + "\n\n" + " ".join(f"w{rng.randrange(3, 1000)}" for _ in range(args.probe_len // 4))
        for _ in range(args.probe_items)
    ]
    backend = detection.HFBackend(model, tok, batch_size=args.probe_batch, share_prefix=True)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    backend.last_logits(prompts[: args.probe_batch])  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    for s in range(0, len(prompts), args.probe_batch):  # one batch = one shared prefix + probe_batch suffixes
        backend.last_logits(prompts[s : s + args.probe_batch])
    _sync(dev)
    dt = time.perf_counter() - t0
    n_tok = sum(len(tok(p)["input_ids"]) for p in prompts)
    p = param_counts(cfg)
    out = {
        "tokens_s": n_tok / dt,
        "items_s": len(prompts) / dt,
        "prefill_frac": 2 * p["non_embedding"] * n_tok / dt / peak if peak else None,
        "peak_gib": _peak_gib(dev),
    }
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


class _WordTokenizer:
    """A minimal tokenizer for random models: "wN" -> id N; enough for HFBackend's encode / pad / split."""

    def __init__(self, vocab: int):
        self.vocab, self.pad_token_id, self.bos_token_id, self.eos_token_id = vocab, 0, 1, 2
        self.padding_side = "left"

    def _ids(self, text: str) -> list[int]:
        return [int(w[1:]) % self.vocab if w.startswith("w") and w[1:].isdigit() else 3 for w in text.split()]

    def __call__(self, texts, add_special_tokens: bool = True, return_tensors=None, padding=False, **kw):
        import torch

        single = isinstance(texts, str)
        rows = [
            ([self.bos_token_id] if add_special_tokens else []) + self._ids(t) for t in ([texts] if single else texts)
        ]
        if return_tensors is None:
            return {"input_ids": rows[0] if single else rows}
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.pad_token_id)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            if self.padding_side == "left":
                ids[i, n - len(r) :], mask[i, n - len(r) :] = torch.tensor(r), 1
            else:
                ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["llama3-8b"], choices=sorted(MODELS))
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N layers (same widths)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512, help="train sequence length")
    ap.add_argument("--answer-tokens", type=int, default=1, help="label tokens per sequence (1 = MC answer letter)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (long sequences)")
    ap.add_argument("--probe-items", type=int, default=256)
    ap.add_argument("--probe-len", type=int, default=400, help="prompt tokens (3/4 of them a shared prefix)")
    ap.add_argument("--probe-batch", type=int, default=32)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (else from the GPU name)")
    ap.add_argument("--skip", choices=["train", "probe"], action="append", default=[])
    ap.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu only runs the code path (for the smoke test with --model tiny); numbers need cuda",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the planned configs and FLOP budgets; no GPU")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    plans = plan(args)
    print_plan(plans, args)
    if args.dry_run:
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "perf.gpu: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with "
            "one, or use --dry-run to see the plan",
            file=sys.stderr,
        )
        return 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (code path only)"
    peak = peak_flops(name, args.peak_tflops) if args.device == "cuda" else None
    print(
        f"device: {name}, peak bf16 {'unknown (pass --peak-tflops)' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}"
    )
    pct = lambda x: "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"  # noqa: E731
    print(
        "| model | layers | train tok/s | MFU (6N) | MFU (4N) | train peak GiB | probe tok/s | probe items/s "
        "| prefill limit | probe peak GiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for pl in plans:
        cfg = pl["config"]
        tr = bench_train(cfg, args, peak) if "train" not in args.skip else {}
        pr = bench_probe(cfg, args, peak) if "probe" not in args.skip else {}
        print(
            f"| {pl['model']} | {cfg['num_hidden_layers']} | {tr.get('tokens_s', float('nan')):,.0f} | "
            f"{pct(tr.get('mfu'))} | {pct(tr.get('mfu_4n'))} | {tr.get('peak_gib', float('nan')):.1f} | "
            f"{pr.get('tokens_s', float('nan')):,.0f} | {pr.get('items_s', float('nan')):.1f} | "
            f"{pct(pr.get('prefill_frac'))} | {pr.get('peak_gib', float('nan')):.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
