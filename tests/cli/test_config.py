"""Every file in conf/ composes, and the top-level keys feed the groups as documented."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
REQUIRED = {
    ("model", "local"): ["model.path=/tmp/m"],
    ("dataset", "local"): ["dataset.train.path=/tmp/a.jsonl", "dataset.eval.test.path=/tmp/b.jsonl"],
}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_file_composes_and_resolves(group, option):
    cfg = _compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    job = {k: v for k, v in cfg.items() if k != "hydra"}
    OmegaConf.to_container(OmegaConf.create(job), resolve=True, throw_on_missing=True)


def test_groups_are_the_documented_ones():
    for g in ["model", "dataset", "detection", "loss", "partition", "logger", "train", "evaluation", "testbed"]:
        assert g in GROUPS


def test_top_level_alpha_beta_feed_the_losses():
    cfg = _compose(["loss=kaft", "alpha=0.3", "beta=0.7"])
    assert (cfg.loss.alpha, cfg.loss.beta) == (0.3, 0.7) and list(cfg.partition.rewards) == [0.3, 0.7, 1.0, 1.0]
    cfg = _compose(["loss=eaft", "alpha=0.5"])
    assert cfg.loss.eaft_alpha == 0.5 and cfg.loss.top_k == 20 and "alpha" not in cfg.loss
    cfg = _compose(["loss=kaft_eaft", "alpha=0.3"])
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.eaft_alpha) == (0.3, 0.5, 1.0)


@pytest.mark.parametrize(
    "loss, expect",
    [
        ("kaft", {"alpha": 0.1, "beta": 0.5}),  # KaFT §3
        ("eaft", {"eaft_alpha": 1.0}),  # EAFT §3, LLaMA-Factory eaft_alpha
        ("kaft_eaft", {"alpha": 0.1, "beta": 0.5, "eaft_alpha": 1.0}),
        ("dpo", {"alpha": 0.1, "beta": 0.5, "dpo_beta": 0.1}),
    ],
)
def test_each_loss_has_its_own_paper_defaults(loss, expect):
    cfg = _compose([f"loss={loss}"])
    assert cfg.alpha is None and cfg.beta is None  # nothing given: each loss falls back to its own default
    assert {k: cfg.loss[k] for k in expect} == expect
    assert list(_compose(["partition=k8"]).partition.rewards)[:3] == [0.1, 0.3, 0.5]


@pytest.mark.parametrize(
    "before, after, exponent", [([], [], "1.0"), (["alpha=0.5"], [], "0.5"), ([], ["--resolve"], "1.0")]
)
def test_cfg_job_shows_the_eaft_exponent(before, after, exponent):
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", "loss=eaft", *before, "--cfg", "job", *after],
        capture_output=True,
        text=True,
        cwd=CONF.parent,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"  eaft_alpha: {exponent}\n" in out.stdout and "${" not in out.stdout


def test_model_configs_override_stage_defaults():
    assert _compose([]).train.lr == 2e-3  # the testbed's scaled setting
    c = _compose(["model=llama3_8b", "dataset=medqa"])
    assert (c.train.lr, c.train.batch_size, c.train.epochs, c.train.max_length) == (1e-4, 16, 1, 2048)
    assert c.train.warmup_ratio == 0.1 and c.detection.num_orders == 10 and c.detection.num_samples == 10
    assert c.detection.temperature == 0.7 and c.detection.shots == 3


def test_cfg_job_shows_the_groups():
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", "--cfg", "job"], capture_output=True, text=True, cwd=CONF.parent, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for key in ["model:", "dataset:", "detection:", "loss:", "partition:", "logger:"]:
        assert f"\n{key}" in "\n" + out.stdout


SWEEPS = sorted(p.stem for p in (CONF.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_file_composes(name):
    """Sweep files live in sweeps/ and are selected with +sweeps=NAME (kaft's Hydra search-path plugin)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = _compose([f"+sweeps={name}"])
    params = cfg.hydra.sweeper.params
    assert params, f"sweeps/{name}.yaml defines no hydra.sweeper.params"
    parser = OverridesParser.create()
    jobs = 1
    for key, value in params.items():
        (ov,) = parser.parse_overrides([f"{key}={value}"])
        jobs *= len(list(ov.sweep_iterator())) if ov.is_sweep_override() else 1
    assert jobs >= 2
    if name == "mission":
        assert jobs == 4 and set(params) == {"loss", "alpha"}
    if name == "table3_ood":  # KaFT Table 3: MedQA training, the Xiezhi OOD test sets, each in its own domain
        assert params["dataset"] == "medqa_xiezhi"
        ds = _compose(["dataset=medqa_xiezhi"]).dataset
        assert ds.train.path == "GBaker/MedQA-USMLE-4-options" and {n: e.domain for n, e in ds.eval.items()} == {
            "xiezhi_history": "history",
            "xiezhi_engineering": "engineering",
            "xiezhi_law": "law",
        }
    if name == "table7_domains":  # KaFT Table 7: each Xiezhi domain's training set, all three test sets
        assert params["dataset"] == "xiezhi_history,xiezhi_engineering,xiezhi_law" and jobs == 15
    if name in ("sma_table5", "sma_table6"):  # SMA's tables: free-form responses on the free-form testbed
        assert (params["dataset"], params["detection"]) == ("testbed_freeform", "mc_conversion")
        rows = {
            m: _compose([f"method={m}", "dataset=testbed_freeform", "detection=mc_conversion"]).loss
            for m in params["method"].split(",")
        }
        if name == "sma_table5":
            assert jobs == 5 and rows["vanilla"].name == "constant" and rows["sma_sft_self"].name == "sft_self"
            assert {rows[m].pairs for m in rows if rows[m].name == "dpo"} == {
                "self_self",
                "dataset_self",
                "dataset_dataset",
            }
        else:
            assert rows["sma_sft_plus_dpo"].sft_weight > 0 and rows["sma_sft_self_all"].labels == "all"
    if name == "table2_main":  # both readings of self-aligning's r_i
        assert {"self_align", "self_align_majority"} <= set(params["method"].split(","))


STAGE_DEFAULTS = {
    "train": CONF / "train" / "lora.yaml",
    "detection": CONF / "detection" / "diversified.yaml",
    "evaluation": CONF / "evaluation" / "default.yaml",
}


def _leaves(node, prefix=()):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_model_configs_state_only_what_differs_from_the_stage_defaults(model):
    """One source of defaults: a model config overrides train / detection / evaluation settings, never restates
    them (conf/train/lora.yaml and friends hold the defaults)."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{model}.yaml"))
    restated = []
    for group, path in STAGE_DEFAULTS.items():
        default = OmegaConf.to_container(OmegaConf.load(path))
        for key, value in _leaves(own.get(group) or {}):
            node = default
            for k in key:
                node = node.get(k, {}) if isinstance(node, dict) else {}
            if node == value:
                restated.append(".".join((group, *key)))
    assert restated == []
