"""kaft.detection's registries and settings: the detect cache key is pinned, a detector registered from outside runs
end to end, and every detector's declarations match the records it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kaft import detection
from kaft.cache import make_key
from kaft.detection import DETECTORS, DetectionError, Detector, Layout, Need
from kaft.errors import KaftError

CONF = Path(__file__).resolve().parents[3] / "conf"

# settings() of every conf/detection yaml as kaft.detect computed them before the package split (git show
# ab10fa1:kaft/detect.py), composed with model=testbed (the default) and model=llama3_8b: part of the detect key.
TESTBED = {
    "name": "diversified",
    "estimator": "sample",
    "backend": "hf",
    "prompt": "kaft",
    "num_orders": 10,
    "num_samples": 10,
    "temperature": 0.7,
    "shots": 3,
    "max_new_tokens": 2,
    "batch_size": 64,
    "diverse_query": True,
    "response_sampling": True,
    "order_scheme": "random",
    "chunk_size": 512,
    "share_prefix": True,
    "confidence_threshold": 0.5,
    "high_conf_threshold": 0.8,
    "dtype": None,
}
CONVERSION = {
    "name": "mc_conversion",
    "n_distractors": 3,
    "distractor_sources": ["dataset", "group"],
    "generate_samples": 8,
    "generate_max_new_tokens": 8,
}
PINNED = {
    "diversified": {},
    "generative": {"name": "generative", "max_response_tokens": 32},
    "icl": {"name": "icl", "prompt": "ren", "shots": 5},
    "mc_conversion": CONVERSION,
    "no_both": {"diverse_query": False, "response_sampling": False},
    "no_diverse_query": {"diverse_query": False},
    "no_sampling": {"response_sampling": False},
}
MODELS = {"testbed": {}, "llama3_8b": {"max_new_tokens": 4, "batch_size": 16}}
KEYS = {  # make_key(settings) of the testbed compositions, and of the greedy probe kaft.run derives from them
    "diversified": ("298e0cb2bb0d7c427bf4", "6a034afbd2860e2caf34"),
    "generative": ("6634c8e511c54576aba1", "6a034afbd2860e2caf34"),  # added with it (not before the split)
    "icl": ("f8263e9dfa4c413899a5", "1e3711433b84a9206934"),
    "mc_conversion": ("a501a4a4faa7436a636d", "6a034afbd2860e2caf34"),
    "no_both": ("aa7a0161f2fd8b3e9be8", "6a034afbd2860e2caf34"),
    "no_diverse_query": ("e88792a893cbb43b4f49", "6a034afbd2860e2caf34"),
    "no_sampling": ("a97c2a5778aee78fc8fb", "6a034afbd2860e2caf34"),
}


def _composed(name: str, model: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"detection={name}", f"model={model}"])
    return OmegaConf.to_container(cfg.detection, resolve=True)


def _greedy_probe(det: dict) -> dict:
    """The settings of kaft's greedy-answer probe (kaft.stages.stage_greedy) as its cache key sees them."""
    return detection.settings(detection.greedy_probe(det))


def test_every_detection_yaml_has_a_pinned_setting_set():
    assert sorted(PINNED) == sorted(p.stem for p in (CONF / "detection").glob("*.yaml"))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(PINNED))
def test_settings_are_unchanged_by_the_package_split(name, model):
    det = _composed(name, model)
    want = {**TESTBED, **MODELS[model], **PINNED[name]}
    got = detection.settings(det)
    assert got == want and {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    greedy = _greedy_probe(det)
    plain = {k: v for k, v in want.items() if k in TESTBED}  # the probe drops a detector's own keys
    assert greedy == {
        **plain,
        "name": "diversified",
        "estimator": "exact",
        "diverse_query": False,
        "response_sampling": True,
    }
    if model == "testbed":
        assert (make_key(got), make_key(greedy)) == KEYS[name]
    detection.validate(det)


def test_settings_errors_are_one_line_detection_errors():
    assert issubclass(DetectionError, KaftError)
    with pytest.raises(DetectionError, match=r"unknown detection settings \['num_order'\]") as e:
        detection.settings({"num_order": 3})
    assert "\n" not in str(e.value)
    with pytest.raises(DetectionError, match="unknown detection method 'ilc'.*'icl'"):
        detection.validate({"name": "ilc"})
    with pytest.raises(DetectionError, match=r"unknown detection settings \['n_distractors'\]"):
        detection.settings({"name": "diversified", "n_distractors": 3})  # only mc_conversion reads it
    with pytest.raises(DetectionError, match="detection.num_samples must be int"):
        detection.validate({"num_samples": "ten"})
    with pytest.raises(DetectionError, match="distractor_sources"):
        detection.validate({**CONVERSION, "distractor_sources": ["wikipedia"]})
    with pytest.raises(DetectionError, match="detection.backend must be one of \\['hf', 'vllm'\\]"):
        detection.validate({"backend": "tgi"})


def test_backends_come_from_the_registry(tiny_model, tiny_tokenizer):
    b = detection.make_backend({"batch_size": 3}, lambda: (tiny_model, tiny_tokenizer))
    assert isinstance(b, detection.HFBackend) and b.batch_size == 3 and b.share_prefix is True
    assert detection.BACKENDS.names() == ["hf", "vllm"]
    with pytest.raises(DetectionError, match="needs a model directory"):
        detection.make_backend({"backend": "vllm"}, lambda: None, model_path=None)


class GoldProbability(Detector):
    """A toy detector: Score = p(gold letter as the first answer token) at T = 1, averaged over the n cyclic shifts
    of the options (what diversified's exact estimator computes with those settings)."""

    def layout(self) -> Layout:
        return Layout(4, self.settings.shots, self.settings.prompt, "cyclic")

    def need(self) -> Need:
        return Need(letter_probs=True, temperature=1.0)

    def record(self, item, per_query):
        return {"score": sum(q["probs"][item.answer] for q in per_query) / len(per_query)}

    def saves_samples(self) -> bool:
        return False


@pytest.fixture()
def toy():
    DETECTORS.register("toy_gold_probability", GoldProbability)
    yield "toy_gold_probability"
    DETECTORS.unregister("toy_gold_probability")


def test_a_detector_registered_from_outside_runs_end_to_end(toy, tiny_model, tiny_tokenizer, mc_items):
    cfg = {"name": toy, "shots": 2, "batch_size": 4, "chunk_size": 5}
    b = detection.make_backend(cfg, lambda: (tiny_model, tiny_tokenizer))
    recs = detection.run_detection(b, mc_items, cfg, 0, "geography", progress=False)
    assert not detection.saves_samples(cfg) and not detection.holds_greedy(cfg)
    assert [r["id"] for r in recs] == [it.id for it in mc_items]
    ids = detection.letter_token_ids(tiny_tokenizer, 4)
    queries = detection.build_queries(mc_items, 4, 2, 0, "geography", scheme="cyclic")
    for r, it in zip(recs, mc_items):
        assert r["orders"] == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]] and r["gold"] == it.answer
        by_hand = []
        for q in (q for q in queries if q.item == mc_items.index(it)):
            with torch.inference_mode():
                p = torch.softmax(tiny_model(**tiny_tokenizer(q.prompt, return_tensors="pt")).logits[0, -1], -1)
            by_hand.append(float(p[ids[q.order.index(it.answer)]].sum()))
        assert r["score"] == pytest.approx(sum(by_hand) / 4, abs=1e-5)
    exact = detection.run_detection(
        b,
        mc_items,
        {
            "shots": 2,
            "batch_size": 4,
            "estimator": "exact",
            "num_orders": 4,
            "order_scheme": "cyclic",
            "temperature": 1.0,
        },
        0,
        "geography",
        progress=False,
    )
    assert [r["score"] for r in recs] == pytest.approx([r["score"] for r in exact], abs=1e-6)


CASES = {
    "sample": {},
    "exact": {"estimator": "exact"},
    "greedy": {"response_sampling": False},
    "exact greedy": {"response_sampling": False, "estimator": "exact"},
    "icl": {"name": "icl", "prompt": "ren"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_declarations_match_the_records(case, tiny_model, tiny_tokenizer, mc_items):
    from kaft.strategy import greedy_answer

    cfg = {"num_orders": 2, "num_samples": 2, "shots": 2, "max_new_tokens": 1, "batch_size": 8, **CASES[case]}
    b = detection.HFBackend(tiny_model, tiny_tokenizer, batch_size=8)
    recs = detection.run_detection(b, mc_items[:5], cfg, 0, "geography", progress=False)
    assert detection.saves_samples(cfg) == all(r.get("answers") for r in recs)
    assert detection.holds_greedy(cfg) == all(greedy_answer(r) is not None for r in recs)
