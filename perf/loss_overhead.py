"""Training-step cost of each loss vs plain causal-LM cross-entropy: ``python -m perf.loss_overhead [--quick]``.

One step = forward + backward + AdamW step of a LoRA model (r = 16 on all linear layers, the train config's
default), through the trainer's own code path (:func:`kaft.train.sft_batch_loss` / :func:`kaft.train.dpo_batch_loss`).
The reference is ``model(input_ids, attention_mask, labels=labels).loss``, timed side by side in the same run:
rounds interleave all variants (rotating their order), and each ratio is the median over rounds of
``step time / reference step time`` of that round, so load from other processes on the machine mostly cancels.

Models: (a) the testbed model (built or reused from KAFT_CACHE_DIR) on real training prompts, one answer letter per
example; (b) a random-init Llama (hidden 512, 8 layers, vocab 32k, seq 256, batch 8) with one answer token per
example (multiple choice, the kaft case) and with 128 answer tokens per example (long answers, where the token
weights act on many rows of a 32k-wide softmax). ``full`` rows force the full-logits path (a model without
``logits_to_keep``) to show the loss's own overhead separately from the logits slicing.

DPO pairs the same prompts with a wrong answer. It costs more than SFT because each step also runs the reference
forward (the adapter disabled, no grad) and, when the answers are longer than one token, both the chosen and the
rejected sequence (2x the rows); with one-letter answers both are read from one sequence (see kaft.train).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

LOSS_CFGS = {
    "constant": {"name": "constant"},
    "kaft": {"name": "kaft", "alpha": 0.1, "beta": 0.5},
    "eaft": {"name": "eaft", "eaft_alpha": 1.0, "top_k": 20},
    "dft": {"name": "dft"},
}
TARGETS = {"constant": 1.05, "kaft": 1.05, "eaft": 1.15, "dft": 1.10}
FULL = ("constant", "eaft", "dft")


def _lora(model):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    return get_peft_model(model, cfg)


def _sft_batch(input_ids, n_answer: int, weights):
    """labels on the last ``n_answer`` tokens of each row (right-aligned, no padding)."""
    import torch

    labels = torch.full_like(input_ids, -100)
    labels[:, -n_answer:] = input_ids[:, -n_answer:]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "weights": torch.as_tensor(weights, dtype=torch.float32),
    }


def _pair_batch(sft: dict, vocab: int, seed: int = 0):
    """DPO pairs: chosen = the SFT example, rejected = the same prompt with other answer tokens."""
    import torch

    from kaft.train import PairCollator

    g = torch.Generator().manual_seed(seed)
    rows = []
    for ids, lab, w in zip(sft["input_ids"].tolist(), sft["labels"].tolist(), sft["weights"].tolist()):
        n = sum(t != -100 for t in lab)
        wrong = ids[:-n] + [(t + 1 + int(torch.randint(0, vocab - 1, (1,), generator=g))) % vocab for t in ids[-n:]]
        rows.append(
            {
                "chosen_ids": ids,
                "chosen_labels": lab,
                "rejected_ids": wrong,
                "rejected_labels": lab[:-n] + wrong[-n:],
                "weights": w,
            }
        )
    return PairCollator(pad_id=0)(rows)


def measure(model, sft: dict, pairs: dict, rounds: int, warmup: int, full: bool = True) -> dict[str, dict]:
    """Median step time (s) and median per-round ratio to the HF-loss reference of every variant."""
    import torch

    from kaft import train

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    fwd = {k: sft[k] for k in ("input_ids", "attention_mask")}

    def step(fn):
        t0 = time.perf_counter()
        loss = fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    variants = {"ce (HF labels=)": lambda: model(**fwd, labels=sft["labels"]).loss}
    for name, cfg in LOSS_CFGS.items():
        variants[name] = lambda cfg=cfg: train.sft_batch_loss(model, sft, cfg, True)[0]
    variants["dpo"] = lambda: train.dpo_batch_loss(model, pairs, 0.1, True)[0]
    for name in FULL if full else ():  # kaft costs what constant costs: the same code, other weights
        variants[f"{name} (full)"] = lambda cfg=LOSS_CFGS[name]: train.sft_batch_loss(model, sft, cfg, False)[0]
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    model.train()
    for r in range(warmup + rounds):
        shift = r % len(names)
        got = {n: step(variants[n]) for n in names[shift:] + names[:shift]}
        if r >= warmup:
            for n in names:
                times[n].append(got[n])
    ref = times[names[0]]
    return {
        n: {"ms": 1000 * statistics.median(t), "ratio": statistics.median(a / b for a, b in zip(t, ref))}
        for n, t in times.items()
    }


def _print_table(title: str, rows: dict[str, dict], note: str) -> None:
    print(f"\n{title}\n{note}")
    print(f"| {'loss':<18} | {'step ms':>9} | {'× CE':>6} | target |")
    print(f"|{'-' * 20}|{'-' * 11}:|{'-' * 7}:|--------|")
    for name, r in rows.items():
        base = name.split(" ")[0]
        target = f"≤ {TARGETS[base]:.2f}" if base in TARGETS and "(full)" not in name else ""
        flag = " ✗" if target and r["ratio"] > TARGETS[base] else ""
        print(f"| {name:<18} | {r['ms']:>9.1f} | {r['ratio']:>6.3f} | {target}{flag} |")


def mid_model(hidden: int, layers: int, vocab: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 32 * 32 + 32,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: a small random model, 2 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 2)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine more threads than free cores make OpenMP "
        "spin and the timings meaningless)",
    )
    ap.add_argument("--skip-testbed", action="store_true", help="only the random-init model")
    ap.add_argument("--cache", default=os.environ.get("KAFT_CACHE_DIR", os.path.expanduser("~/.cache/kaft")))
    args = ap.parse_args(argv)

    import torch

    from kaft import train

    torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} rounds after {args.warmup} warm-up")

    if not args.skip_testbed:
        from omegaconf import OmegaConf

        from kaft import modeling
        from kaft.data import load_items
        from kaft.losses.pairs import build_pairs
        from kaft.testbed.model import build_model

        root = os.path.join(os.path.dirname(__file__), "..")
        tb = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "conf/testbed/default.yaml")))
        path = build_model(tb, args.cache, progress=False)
        model, tok = modeling.load({"source": "local", "dtype": "float32"}, str(path), "cpu")
        items = load_items(
            {"source": "testbed", "split": "train"}, domain="geography", config={"testbed": tb}, cache_dir=args.cache
        )[:16]
        rows = train.build_examples(tok, items, [0.1, 0.5, 1.0, 1.0] * 4, "geography", None, 2048)
        sft = train.WeightedCollator(tok.pad_token_id)(rows)
        records = [
            {"id": it.id, "gold": it.answer, "answers": [[(it.answer + 1) % len(it.options)]]} for it in items
        ]  # one wrong sample per item: one pair each, through the real pair builder
        pair_list = build_pairs(items, records, "dataset_self", 1, 0, domain="geography")
        pairs = train.PairCollator(tok.pad_token_id)(train.build_pair_examples(tok, pair_list, [1.0] * 16, 2048))
        res = measure(_lora(model), sft, pairs, rounds, args.warmup)
        _print_table(
            f"(a) testbed model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, vocab "
            f"{len(tok)}), batch {len(rows)}, prompts of {min(len(r['input_ids']) for r in rows)}-"
            f"{max(len(r['input_ids']) for r in rows)} tokens, 1 answer token",
            res,
            "(full) = full-logits path; dpo = 16 one-letter pairs",
        )

    hidden, layers, vocab, seq, batch = (64, 2, 1000, 32, 4) if args.quick else (512, 8, 32000, 256, 8)
    model = _lora(mid_model(hidden, layers, vocab))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    weights = [0.1, 0.5, 1.0, 1.0] * (batch // 4)
    for n_answer in (1, seq // 2):
        sft = _sft_batch(ids, n_answer, weights)
        res = measure(model, sft, _pair_batch(sft, vocab), rounds, args.warmup)
        _print_table(
            f"(b) random Llama hidden {hidden}, {layers} layers, vocab {vocab}, seq {seq}, batch {batch}, "
            f"{n_answer} answer token(s) per example",
            res,
            f"dpo = {batch} pairs ({'one row each' if n_answer == 1 else 'two rows each'})",
        )


if __name__ == "__main__":
    main()
