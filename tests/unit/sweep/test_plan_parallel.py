"""kaft.sweep.plan_parallel and the full-fine-tuning memory of kaft.sweep.plan_estimate, against their formulas by
hand: bytes per parameter of weights / gradients / Adam state (16 under full fine-tuning in bfloat16 and in float32,
LoRA's 16 per adapter parameter), FSDP divides them by N, DDP replicates them; and the plan of
``model=qwen2_5_32b_instruct train=full`` on 8 x 80 GB (fits with FSDP only)."""

from __future__ import annotations

import pytest
from test_plan import _plan

from kaft.sweep import plan_estimate as est
from kaft.sweep import plan_parallel as par

GB = est.GB
# Qwen2.5-32B-Instruct's config.json (conf/model/qwen2_5_32b_instruct.yaml) and its published 32.764B parameters
QWEN32 = est.Arch.from_fields(
    {
        "model_type": "qwen2",
        "hidden_size": 5120,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "intermediate_size": 27648,
        "vocab_size": 152064,
    },
    "test",
)
P32 = est.Params(total=32_763_876_352, lora=134_217_728, matmul=32_763_876_352 - 152064 * 5120, model_class="Qwen2")


@pytest.mark.parametrize(("nbytes", "weights", "grads", "optim"), [(2, 2, 2, 12), (4, 4, 4, 8)])
def test_full_fine_tuning_holds_16_bytes_per_parameter(nbytes, weights, grads, optim):
    s = est.model_states(P32, nbytes, full=True)
    assert s == {"weights": weights * P32.total, "gradients": grads * P32.total, "optimizer": optim * P32.total}
    assert sum(s.values()) == 16 * P32.total  # ZeRO §3.1's mixed-precision Adam: 2 + 2 + 12; float32: 4 + 4 + 8


def test_lora_holds_the_frozen_weights_and_16_bytes_per_adapter_parameter():
    s = est.model_states(P32, 2, full=False)
    assert s == {"weights": 2 * P32.total, "lora_optimizer": 16 * P32.lora}


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_fsdp_divides_the_states_by_n_and_ddp_replicates_them(n):
    states = est.model_states(P32, 2, full=True)
    ddp = par.per_gpu(states, n, "ddp", gathered=123.0)
    fsdp = par.per_gpu(states, n, "fsdp", gathered=123.0)
    assert ddp == states  # every rank a whole replica, whatever N
    assert fsdp == {**{k: v / n for k, v in states.items()}, "gathered": 123.0}
    with pytest.raises(ValueError, match="unknown strategy"):
        par.per_gpu(states, n, "zero4", 0.0)


def test_gathered_units_are_two_of_the_largest_in_the_model_dtype():
    embed = 152064 * 5120  # 778.6M: larger than a decoder layer (32.76B - 2 embeddings) / 64 = 487.6M
    assert par.largest_unit(QWEN32, P32) == embed
    single = est.training_memory(QWEN32, P32, 2, batch=2, max_length=2048, lora_dropout=0.0, full=True)["checkpointing"]
    row = par.training_per_gpu(QWEN32, P32, 2, True, single, 8, "fsdp")
    assert row["gathered"] == pytest.approx(2 * embed * 2 / GB)
    assert row["weights"] + row["gradients"] + row["optimizer"] == pytest.approx(16 * P32.total / 8 / GB)
    assert row["activations"] == single["activations"] and row["overhead"] == single["overhead"]
    one = par.training_per_gpu(QWEN32, P32, 2, True, single, 1, "ddp")
    assert one == pytest.approx(single)  # one GPU under DDP is the single-GPU plan
    assert sum(row.values()) < 80 < sum(par.training_per_gpu(QWEN32, P32, 2, True, single, 8, "ddp").values())


def test_gpu_counts_and_the_lora_settings_counted():
    assert par.gpu_counts(8) == [1, 2, 4, 8] and par.gpu_counts(6) == [1, 2, 4, 6] and par.gpu_counts(1) == [1]
    assert par.counted_lora({"finetune": "full", "lora": {"r": 8}})["target_modules"]  # partial: defaults counted
    assert par.counted_lora({"lora": {"r": 4, "target_modules": ["q_proj"]}}) == {"r": 4, "target_modules": ["q_proj"]}


@pytest.mark.slow
def test_qwen_32b_full_fine_tuning_on_8_gpus_fits_with_fsdp_only():
    from kaft.sweep import plan

    (j,) = _plan(["model=qwen2_5_32b_instruct", "train=full"])
    assert j["parallel"]["full"] and j["params"].total == pytest.approx(32.76e9, rel=0.01)
    rows = {(r["gpus"], r["strategy"]): sum(r["memory"].values()) for r in j["parallel"]["rows"]}
    assert rows[(8, "fsdp")] < 80 < rows[(8, "ddp")] and rows[(4, "fsdp")] > 80
    assert rows[(1, "ddp")] == pytest.approx(sum(j["memory"]["train_checkpointing"].values()))
    text = "\n".join(plan.render(j, plan.Settings()))
    assert "trainable: all (train=full)" in text and "8 GPU(s)" in text
    (lora,) = _plan(["model=qwen2_5_32b_instruct"])
    lrows = {(r["gpus"], r["strategy"]): sum(r["memory"].values()) for r in lora["parallel"]["rows"]}
    assert lrows[(1, "ddp")] < 80  # LoRA fits one GPU (KaFT's recipe with checkpointing at micro-batch 2)
