"""kaft.sweep.plan: every model config plans offline with its published size, the formulas hold, wrong LoRA targets and
unusable settings are caught, the paper's SLURM sweep prints a plan per job, and after a real run the plan sees
the job finished and every stage in the cache (the keys are kaft.run's own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaft.sweep import plan
from kaft.sweep import plan_estimate as est

REPO = Path(__file__).resolve().parents[3]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
# published parameter counts (model cards / config.json), in billions
PUBLISHED_B = {
    "llama3_8b": 8.03,
    "llama3_3b": 3.21,
    "mistral_7b": 7.24,
    "qwen1_5_7b": 7.72,
    "qwen2_7b_instruct": 7.62,
    "qwen3_4b_instruct": 4.02,
    "glm4_9b": 9.40,
    "qwen2_5_32b_instruct": 32.76,
}


def _env(tmp_path: Path) -> dict:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "KAFT_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    env.pop("HF_HUB_CACHE", None)
    return env


def _plan(args: list[str], multirun: bool = False) -> list[dict]:
    s = plan.Settings()
    return [plan.plan_job(n, ov, cfg, multirun, s) for n, ov, cfg in plan.compose_jobs(args, multirun)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import save_tiny_model, tiny_train_rows

    root = tmp_path_factory.mktemp("plan")
    save_tiny_model(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_train_rows(12)))
    return root


def _testbed_params() -> int:
    """The testbed Llama by hand: untied embeddings, 4 layers of attention (4 h²) + SwiGLU (3 h i) + 2 norms."""
    h, i, layers, vocab = 128, 512, 4, 454
    return 2 * vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_plans_offline(model, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFT_CACHE_DIR", str(tmp_path / "cache"))
    extra = [f"model.path={tiny / 'model'}"] if model == "local" else []
    (job,) = _plan([f"model={model}", *extra, "evaluation.limit=8"])
    assert not [p for p in job["problems"] if not p.startswith("model: model '")], job["problems"]  # only: not cached
    p, mem = job["params"], job["memory"]
    if model in PUBLISHED_B:
        assert p.total / 1e9 == pytest.approx(PUBLISHED_B[model], rel=0.01)
        assert "not in the local Hugging Face cache" in job["problems"][0]  # hub ids are checked (kaft/hub.py)
    elif model == "testbed":
        assert p.total == _testbed_params()
    else:
        from helpers import make_model, make_tokenizer

        assert p.total == sum(t.numel() for t in make_model(len(make_tokenizer())).parameters())
    assert p.lora == _lora_by_hand(job["arch"], model)
    weights = p.total * est.dtype_bytes(_dtype(model)) / est.GB
    for stage in ("detection", "train_checkpointing", "train_no_checkpointing", "evaluation"):
        assert mem[stage]["weights"] == pytest.approx(weights)
    assert sum(mem["train_checkpointing"].values()) < sum(mem["train_no_checkpointing"].values())
    assert job["times"]["detection"] > 0 and job["lengths"].probe > job["lengths"].train  # k-shot > zero-shot


def _lora_by_hand(a: est.Arch, model: str) -> int:
    """r × (in + out) of every adapted projection in every layer (GLM-4 fuses gate and up into gate_up_proj)."""
    from omegaconf import OmegaConf

    # the train group's defaults, overridden by what the model config sets (it states only what differs)
    lora = OmegaConf.merge(
        OmegaConf.load(REPO / "conf" / "train" / "lora.yaml").lora,
        OmegaConf.load(REPO / "conf" / "model" / f"{model}.yaml").get("train", {}).get("lora") or {},
    )
    h, q, kv, i = a.hidden_size, a.num_attention_heads * a.head_dim, a.kv_dim, a.intermediate_size
    shapes = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
        "gate_up_proj": (h, 2 * i),
    }
    return a.num_hidden_layers * sum(int(lora.r) * sum(shapes[m]) for m in lora.target_modules)


def _dtype(model: str) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO / "conf" / "model" / f"{model}.yaml").model.dtype


def test_memory_formulas_for_llama3_8b():
    arch = est.Arch.from_fields(
        {
            "model_type": "llama",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 128256,
        },
        "test",
    )
    prm = est.count_params(
        arch,
        {
            "r": 16,
            "lora_alpha": 32,
            "dropout": 0.05,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
    )
    assert prm.lora == 32 * 16 * (2 * 8192 + 2 * 5120 + 3 * 18432)  # r × (in + out) of each adapted projection
    assert est.kv_bytes_per_token(arch, 2) == 128 * 1024  # 2 × 32 layers × 8 KV heads × 128 × 2 bytes
    det = est.detection_memory(arch, prm, 2, batch=16, seqs_per_prompt=10, prompt_tokens=1500, new_tokens=4)
    assert det["kv_cache"] == pytest.approx(160 * 1504 * 128 * 1024 / est.GB)
    assert det["weights"] == pytest.approx(8.03e9 * 2 / est.GB, rel=0.01)
    t = est.training_memory(arch, prm, 2, batch=16, max_length=2048, lora_dropout=0.05)
    assert t["checkpointing"]["lora_optimizer"] == pytest.approx(prm.lora * 16 / est.GB)
    # docs/slurm.md's "about 40 GB with LoRA, bf16, batch 16, length 2048" for an 8B model with checkpointing
    assert 30 < sum(t["checkpointing"].values()) < 45 < 200 < sum(t["no_checkpointing"].values())
    assert est.max_batch(sum(det.values()), det["weights"] + det["overhead"], 24.0, 16) < 16


def test_wrong_lora_targets_fail_in_the_plan(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFT_CACHE_DIR", str(tmp_path / "cache"))
    (glm,) = _plan(["model=glm4_9b", "train.lora.target_modules=[q_proj,gate_proj,up_proj]"])
    assert any(
        "['gate_proj', 'up_proj'] match no module of Glm4ForCausalLM" in p and "gate_up_proj" in p
        for p in glm["problems"]
    ), glm["problems"]
    (bad,) = _plan(["model=llama3_8b", "train.lora.target_modules=[qproj]"])
    assert any("train.lora.target_modules ['qproj']" in p for p in bad["problems"]), bad["problems"]


def test_bad_settings_are_one_line(tmp_path):
    for args, says in (
        (["plan.mfu=2"], "plan.mfu must be in (0, 1], got 2"),
        (["plan.nodes=4"], "plan.nodes is not a plan setting"),
        (["--cfg", "job"], "kaft.sweep.plan takes kaft.run's overrides"),
        (["loss=nope"], "loss"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "kaft.sweep.plan", *args],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2 and out.stderr.startswith("kaft: error:") and says in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_paper_sweep_on_slurm_prints_a_plan_per_job_offline(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "kaft.sweep.plan",
        "-m",
        "+sweeps=table2_main",
        "model=llama3_8b",
        "dataset=medqa",
        "hydra/launcher=slurm",
        "plan.gpu_memory_gb=36",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]  # it lists problems (nothing cached offline): exit 1
    text = out.stdout
    assert "gpus_per_node is not set, so the jobs get no GPU" in text
    blocks = text.split("\njob ")[1:]
    methods = ["base", "vanilla", "no_conflict", "self_align", "self_align_majority", "kaft"]
    assert [b.split(":", 1)[0] for b in blocks] == [str(i) for i in range(6)]
    for method, block in zip(methods, blocks):
        assert f"method={method} " in block.splitlines()[0]
        assert "8.030B parameters" in block and "LoRA trainable 41.94M" in block
        assert "hf download meta-llama/Meta-Llama-3-8B" in block  # not cached, offline: the download to run
        assert "datasets.load_dataset('GBaker/MedQA-USMLE-4-options'" in block
        assert "evaluation  " in block and "FLOP-based at MFU 0.35 of 989 TFLOP/s" in block
        assert ("training    none" in block) == (method == "base")
    lines = {ln[2:13].strip(): ln for ln in blocks[1].splitlines()}
    # 16 prompts × 10 samples of a 3-shot prompt: ~20 GB of KV cache next to 15 GB of weights
    assert "DOES NOT FIT 36 GB (at most detection.batch_size=" in lines["detection"], lines["detection"]
    assert lines["training"].endswith("fits 36 GB") and lines["evaluation"].endswith("fits 36 GB")
    assert "gradient checkpointing on" in lines["training"] and "DOES NOT FIT" in lines["(ckpt off)"]
    assert "GPU time still to compute" in text and "of the 6 to run, 6 cannot run as configured here" in text
    assert not any(tmp_path.glob("multirun")) and not any(tmp_path.glob("outputs"))  # nothing created, submitted


@pytest.mark.slow
def test_after_a_run_the_plan_sees_the_finished_job_and_its_cache(tiny, tmp_path):
    data = tiny / "train.jsonl"
    common = [
        "model=local",
        f"model.path={tiny / 'model'}",
        "dataset=local",
        f"dataset.train.path={data}",
        f"dataset.eval.test.path={data}",
        "experiment=smoke",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = _env(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "kaft.run", "-m", *common, "loss=kaft", "progress=false"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.sweep.plan", "-m", *common, "loss=kaft,constant"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done, new = out.stdout.split("\njob ")[1:]
    assert "status      finished" in done and "status      to run" in new
    assert (
        "cache       detect: cached, partition: cached, train: cached, evaluate: cached, evaluate_base: cached" in done
    ), done
    # the other loss shares detection and the base evaluation, and trains an adapter of its own
    assert "detect: cached, partition: cached, train: compute, evaluate: compute, evaluate_base: cached" in new, new
    assert "measured with the model's tokenizer on 12 items" in done
    assert "1 of 2 job(s) finished; of the 1 to run, 0 cannot run" in out.stdout
