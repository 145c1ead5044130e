"""The verifier config group changed no default key: the default job's detect, evaluate and train keys and its
identity are the ones computed before the group existed (pinned), the verifier enters the detect key only of
generative detection, and the identity leaves ``verifier`` out while it is the default (identity.NEW_DEFAULTS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kaft import identity
from kaft import stages as S
from kaft.items import FreeFormItem, MCItem
from kaft.sweep.plan import DryCache, Missing

CONF = Path(__file__).resolve().parents[2] / "conf"
MC = [MCItem(id=f"a{i}", question="q ?", options=["x", "y"], answer=0) for i in range(8)]
FREE = [FreeFormItem(id=f"f{i}", question="q ?", answer="x") for i in range(8)]
FPS = {"train": "fp-t", "bench_a": "fp-a"}

# (detect, evaluate base, evaluate tuned, train, identity sha256[:20]), computed on h-generative before the verifier
# group was added (commit 09f7730), with the fake fingerprints and model id above. The testbed_freeform identity
# changed on purpose since (its dataset config trains on sentence responses and gained the free-form benchmark
# testbed_ff); its keys, with the fake fingerprints here, did not
PINNED = {
    (): ("630d0cbed0cf29ff9e95", "c216d8412535e042cb91", "510e64cedd04d8db8103", "5539ff1c71243ba744f5", "f2e9c4d7c250714c9794"),
    ("dataset=testbed_freeform", "detection=mc_conversion"): (
        "a1c6d596b7cb166a8ccc", "c216d8412535e042cb91", "510e64cedd04d8db8103", "5539ff1c71243ba744f5", "e0369c1aa25e03830827",
    ),
    ("model=llama3_8b", "dataset=medqa"): (
        "dbb4a6aa02b05af9cfdb", "da562177a504f34cd61c", "3fbfc338762dd0c41bdc", "559d70b89a33a37124a9", "408ae282cd88c48a657d",
    ),
    ("detection=icl",): (
        "f3657fdbf38e28d03927", "c216d8412535e042cb91", "510e64cedd04d8db8103", "5539ff1c71243ba744f5", "dbdc7903f73dc00f68d2",
    ),
}  # fmt: skip


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _key(fn, *args) -> str:
    with pytest.raises(Missing) as e:
        fn(*args)
    return e.value.key


def _keys(cfg, tmp_path, train=MC) -> tuple[str, ...]:
    ctx = S.StageContext(cfg, DryCache(str(tmp_path)), None, "model-id", FPS)
    return (
        _key(S.stage_detect, ctx, train),
        _key(S.stage_evaluate, ctx, None, {"bench_a": MC}, ("base", "model-id"), Path(".")),
        _key(S.stage_evaluate, ctx, None, {"bench_a": MC}, ("tuned", "tk"), Path(".")),
        _key(S.stage_train, ctx, MC, [1.0] * len(MC), None),
        identity.make(identity.config_part(cfg, None), FPS, "model-id")["sha256"][:20],
    )


@pytest.mark.parametrize("overrides", sorted(PINNED))
def test_default_keys_and_identity_are_pinned(overrides, tmp_path):
    cfg = _cfg(overrides)
    assert cfg.verifier == {"name": "exact"}
    assert _keys(cfg, tmp_path) == PINNED[overrides]
    assert "verifier" not in identity.config_part(cfg, None)


def test_a_non_default_verifier_enters_identity_and_only_a_judging_detection(tmp_path):
    contains = _cfg(["verifier=contains"])
    assert identity.config_part(contains, None)["verifier"] == {"name": "contains"}
    assert _keys(contains, tmp_path)[:4] == PINNED[()][:4]  # multiple-choice detection and evaluation ignore it
    gen = ["dataset=testbed_freeform", "detection=generative"]
    exact_key = _keys(_cfg(gen), tmp_path, FREE)[0]
    assert _keys(_cfg([*gen, "verifier=contains"]), tmp_path, FREE)[0] != exact_key
    judge = _keys(_cfg([*gen, "verifier=llm_judge"]), tmp_path, FREE)[0]
    assert (
        judge != exact_key
        and _keys(_cfg([*gen, "verifier=llm_judge", "verifier.language=zh"]), tmp_path, FREE)[0] != judge
    )
