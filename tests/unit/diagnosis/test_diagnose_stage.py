"""The diagnosis stage on the tests' tiny random Llama with a fresh LoRA adapter (B = 0: the tuned model is the base
model), so its rows are known without training: zero JS, the same greedy answer before and after, runs drawn from
the same distribution; the second call is a cache hit with the same rows."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kaft import stages as S
from kaft.cache import Cache
from kaft.diagnosis import stage
from kaft.items import MCItem
from tests.helpers.tiny import make_model, make_tokenizer, tiny_train_rows

CONF = Path(__file__).resolve().parents[3] / "conf"
pytestmark = pytest.mark.slow  # torch + peft imports and a model: about 13 s on 2 shared cores


@pytest.fixture(scope="module")
def tuned():
    from peft import LoraConfig, get_peft_model

    tok = make_tokenizer()
    model = get_peft_model(make_model(len(tok)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    return model.eval(), tok


def test_a_fresh_adapter_is_diagnosed_as_its_base_model(tuned, tmp_path):
    items = [MCItem.from_dict(r) for r in tiny_train_rows(6)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["diagnosis.enabled=true", "diagnosis.icl_shots=2"])
    ctx = S.StageContext(cfg, Cache(str(tmp_path)), None, "tiny", {"train": "fp"})
    calls = []

    def get():
        calls.append(1)
        return tuned

    first = stage.stage_diagnose(ctx, items, "train-key", get)
    again = stage.stage_diagnose(ctx, items, "train-key", get)
    assert (first.cache_hit, again.cache_hit, len(calls)) == (False, True, 1) and again.value == first.value
    for row, it in zip(first.value, items):
        assert row["js"] == pytest.approx(0.0, abs=1e-6) and row["train_pred"] == row["base_pred"]
        assert row["p_sft"] == pytest.approx(row["p_base"], abs=1e-5) and len(row["runs"]) == 5
        assert row["gold"] == it.answer and row["pass_rate"] == sum(a == it.answer for a in row["runs"]) / 5
        assert -1 <= row["ren_consistency"] <= 1 if row["ren_consistency"] is not None else True
