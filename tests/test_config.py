"""Every file in conf/ composes, and the top-level keys feed the groups as documented."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
REQUIRED = {("model", "local"): ["model.path=/tmp/m"],
            ("dataset", "local"): ["dataset.train.path=/tmp/a.jsonl", "dataset.eval.test.path=/tmp/b.jsonl"]}


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
    assert (cfg.loss.alpha, cfg.loss.beta) == (0.3, 0.7)
    cfg = _compose(["loss=eaft", "alpha=0.5"])
    assert cfg.loss.alpha == 0.5 and cfg.loss.k == 20


def test_model_configs_override_stage_defaults():
    assert _compose([]).train.lr == 2e-3  # the testbed's scaled setting
    c = _compose(["model=llama3_8b", "dataset=medqa"])
    assert (c.train.lr, c.train.batch_size, c.train.epochs, c.train.max_length) == (1e-4, 16, 1, 2048)
    assert c.train.warmup_ratio == 0.1 and c.detection.num_orders == 10 and c.detection.num_samples == 10
    assert c.detection.temperature == 0.7 and c.detection.shots == 3


def test_cfg_job_shows_the_groups():
    out = subprocess.run([sys.executable, "-m", "kaft.run", "--cfg", "job"], capture_output=True, text=True,
                         cwd=CONF.parent, timeout=120)
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
