"""Detection benchmark on the testbed training set: ``python -m perf.detection [--quick]``.

Measured side by side in one run, on the testbed model (built or reused from KAFT_CACHE_DIR):

* wall time of the ``exact`` estimator vs ``sample`` (No = Nr = 10), hf backend, and their ratio — against kaft's
  sampler (one prefill per prompt shared by its Nr samples) and against No x Nr generations with HF ``generate``;
* ranking fidelity: Spearman ρ of each against a reference Score from Nr = 200 samples per order
  (the reference decodes one token: on the testbed the answer letter is the first token, see ``unparsed``);
* detection quality of every strategy/ablation: AUROC of Score for the testbed's known ``contradict`` items
  (a low Score should flag them) — diversified, w/o diverse query, w/o response sampling, w/o both, icl.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 40 items, reference Nr = 40")
    ap.add_argument("--cache", default=os.environ.get("KAFT_CACHE_DIR", os.path.expanduser("~/.cache/kaft")))
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from kaft import detection, modeling
    from kaft.data import load_items
    from kaft.diagnosis.signals import rank_consistency
    from kaft.results import auroc
    from kaft.testbed.model import build_model

    root = os.path.join(os.path.dirname(__file__), "..")
    tb = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "conf/testbed/default.yaml")))
    path = build_model(tb, args.cache, progress=False)
    model, tok = modeling.load({"source": "local", "dtype": "float32"}, str(path), "cpu")
    items = load_items(
        {"source": "testbed", "split": "train"}, domain="geography", config={"testbed": tb}, cache_dir=args.cache
    )
    if args.quick:
        items = items[:40]
    contradict = [it.meta.get("kind") == "contradict" for it in items]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = {
        "num_orders": 10,
        "num_samples": 10,
        "temperature": 0.7,
        "shots": 3,
        "max_new_tokens": 2,
        "batch_size": 64,
        "chunk_size": 10_000,
    }

    def run(cfg, label):
        b = detection.HFBackend(
            model, tok, batch_size=cfg.get("batch_size", 64), share_prefix=cfg.get("share_prefix", True)
        )
        t0 = time.perf_counter()
        recs = detection.run_detection(b, items, cfg, 0, "geography", progress=False)
        dt = time.perf_counter() - t0
        scores = [r["score"] for r in recs]
        pos = [s for s, c in zip(scores, contradict) if c]
        neg = [s for s, c in zip(scores, contradict) if not c]
        unparsed = sum(r.get("unparsed", 0) for r in recs)
        return {"label": label, "seconds": dt, "scores": scores, "auroc": auroc(pos, neg), "unparsed": unparsed}

    def naive(cfg, label):
        """The paper's cost model: No x Nr independent generations (HF generate, num_return_sequences=Nr)."""
        qs = detection.build_queries(items, cfg["num_orders"], cfg["shots"], 0, "geography")
        tok.padding_side = "left"
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(qs), 16):
                enc = tok([q.prompt for q in qs[s : s + 16]], return_tensors="pt", padding=True)
                model.generate(
                    **enc,
                    do_sample=True,
                    temperature=0.7,
                    top_k=0,
                    num_return_sequences=cfg["num_samples"],
                    max_new_tokens=cfg["max_new_tokens"],
                    pad_token_id=tok.pad_token_id,
                )
        return {"label": label, "seconds": time.perf_counter() - t0}

    n_ref = 40 if args.quick else 200
    ref = run({**base, "num_samples": n_ref, "max_new_tokens": 1}, f"reference (sample, Nr={n_ref}, 1 token)")
    rows = [
        run({**base, "estimator": "exact"}, "diversified exact (No=10)"),
        run({**base, "estimator": "exact", "share_prefix": False}, "diversified exact, no prefix sharing"),
        run(base, "diversified sample (No=Nr=10)"),
        run({**base, "diverse_query": False}, "w/o diverse query (sample, No=1)"),
        run({**base, "response_sampling": False}, "w/o response sampling (greedy, No=10)"),
        run({**base, "diverse_query": False, "response_sampling": False}, "w/o both (greedy, No=1)"),
        run({"name": "icl", "shots": 3, "prompt": "ren", "batch_size": 64, "chunk_size": 10_000}, "icl (Ren et al.)"),
        run(
            {"name": "icl", "shots": 3, "prompt": "kaft", "batch_size": 64, "chunk_size": 10_000},
            "icl, KaFT prompt layout",
        ),
    ]
    gen = naive(base, "sample via HF generate (No x Nr generations)")
    sample_s = rows[2]["seconds"]
    print(
        f"\ntestbed train set: {len(items)} items ({sum(contradict)} contradicting), 3-shot, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'detector':<42} {'wall s':>8} {'vs sample':>10} {'ρ vs ref':>9} {'AUROC':>7} {'unparsed':>9}")
    for r in [ref, *rows]:
        rho = rank_consistency(r["scores"], ref["scores"]) if r is not ref else 1.0  # Spearman's rho
        print(
            f"{r['label']:<42} {r['seconds']:>8.2f} {sample_s / r['seconds']:>9.1f}x {rho:>9.3f} "
            f"{r['auroc']:>7.3f} {r['unparsed']:>9d}"
        )
    print(f"{gen['label']:<42} {gen['seconds']:>8.2f} {sample_s / gen['seconds']:>9.1f}x   (timing only)")
    ex = rows[0]["seconds"]
    print(
        f"\nexact is {sample_s / ex:.1f}x faster than kaft's sampler (one prefill shared by the Nr samples) and "
        f"{gen['seconds'] / ex:.1f}x faster than No x Nr generations with HF generate"
    )


if __name__ == "__main__":
    main()
