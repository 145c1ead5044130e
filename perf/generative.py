"""Generative probing's speed against HF ``generate``: ``python -m perf.generative [--quick] [--rounds N]``.

Measured side by side in one run, on the testbed model (built or reused from KAFT_CACHE_DIR) and the testbed's
free-form training set, with detection=generative's queries (3-shot free-form prompts, No = 1: no paraphrases),
Nr = 10 samples per query at T = 0.7:

* kaft's sampler (:func:`kaft.detection.responses.sample_prompts` on the ``hf`` backend: one prefill per prompt shared
  by its Nr samples) vs HF ``generate(num_return_sequences=Nr)`` on the same prompts and batches (HF expands each
  prompt Nr times *before* its prefill), both decoding exactly ``max_new_tokens`` tokens (fixed length);
* the same two stopping at a line's end, as generative detection does (kaft: ``stop_at_line``; HF: the same stop
  tokens as ``eos_token_id``, so it stops when every sequence of a batch has ended);
* the whole detector (sampling + the exact verifier + records), items/s.

Rounds are interleaved (each in its own shuffled order) and the median is reported; the ratio is kaft's items/s over HF's (> 1: kaft is faster).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 32 items, 1 round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--items", type=int, default=None, help="the first N training items (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least sensitive to a busy machine)")
    ap.add_argument("--cache", default=os.environ.get("KAFT_CACHE_DIR", os.path.expanduser("~/.cache/kaft")))
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from kaft import detection, modeling
    from kaft.detection.convert import load_freeform
    from kaft.detection.core import line_stop_ids
    from kaft.testbed.model import build_model
    from kaft.verifiers import make_verifier

    torch.set_num_threads(args.threads)
    root = os.path.join(os.path.dirname(__file__), "..")
    tb = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "conf/testbed/default.yaml")))
    path = build_model(tb, args.cache, progress=False)
    model, tok = modeling.load({"source": "local", "dtype": "float32"}, str(path), "cpu")
    items = load_freeform(
        {"source": "testbed", "split": "train"}, "geography", config={"testbed": tb}, cache_dir=args.cache
    )
    n_items = 32 if args.quick else min(args.items or len(items), len(items))
    items, rounds = items[:n_items], 1 if args.quick else args.rounds
    nr, m, bs = 10, args.max_new_tokens, 16
    det = detection.detector_for({"name": "generative", "num_samples": nr, "max_response_tokens": m, "batch_size": bs})
    det.verifier = make_verifier({"name": "exact"})
    prompts = [p for _, p in det.prompts(items, 0, "geography", None, items, 0)]
    backend = detection.HFBackend(model, tok, bs)
    stops = line_stop_ids(tok)

    def kaft(stop: bool):
        backend.sample(prompts, nr, 0.7, m, 0, stop_at_line=stop)

    def hf(stop: bool):
        tok.padding_side = "left"
        kw = {"eos_token_id": stops} if stop else {"min_new_tokens": m}
        for s in range(0, len(prompts), bs):
            enc = tok(prompts[s : s + bs], return_tensors="pt", padding=True)
            model.generate(
                **enc,
                do_sample=True,
                temperature=0.7,
                top_k=0,
                num_return_sequences=nr,
                max_new_tokens=m,
                pad_token_id=tok.pad_token_id,
                **kw,
            )

    def detector():
        det.probe_chunk(backend, items, 0, "geography", None, items, 0, 0)

    cases = {
        "kaft sampler, fixed length": lambda: kaft(False),
        "HF generate(num_return_sequences), fixed length": lambda: hf(False),
        "kaft sampler, stop at line end": lambda: kaft(True),
        "HF generate(num_return_sequences), stop at line end": lambda: hf(True),
        "generative detection (sample + exact verifier)": detector,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    torch.manual_seed(0)
    with torch.inference_mode():
        for r in range(rounds):
            names = list(cases)
            random.Random(r).shuffle(names)  # a different order each round: a busy machine's drift hits all alike
            for name in names:
                fn = cases[name]
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    rate = {k: n_items / statistics.median(v) for k, v in times.items()}
    print(
        f"\ntestbed free-form train set: {n_items} items, 3-shot, No = 1, Nr = {nr}, T = 0.7, max_new_tokens {m}, "
        f"batch {bs}, torch threads {torch.get_num_threads()}, median of {rounds} round(s)"
    )
    for k, v in rate.items():
        print(f"  {k:<55} {v:8.2f} items/s")
    for what in ("fixed length", "stop at line end"):
        ratio = rate[f"kaft sampler, {what}"] / rate[f"HF generate(num_return_sequences), {what}"]
        print(f"  ratio kaft / HF generate, {what}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
