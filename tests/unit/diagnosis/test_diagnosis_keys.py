"""Adding the ``diagnosis`` group changed no job's identity or cache key while it is off: the default jobs' detect
and train keys and identities are the ones pinned before the group existed (tests/unit/test_target_keys.py's
PINNED), the group at its defaults is left out of the identity (kaft.defaults.NEW_DEFAULTS, whose copy of the
defaults is kept equal to the schema's and the YAML's), and the diagnose key holds what changes its rows."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from kaft import defaults, identity, schema
from kaft import stages as S
from kaft.diagnosis import settings, stage
from kaft.items import MCItem
from kaft.sweep.plan import DryCache, Missing

CONF = Path(__file__).resolve().parents[3] / "conf"
MC = [MCItem(id=f"i{i}", question=f"q{i} ?", options=["x", "y", "z", "w"], answer=i % 4) for i in range(4)]
FPS = {"train": "fp-train", "bench_a": "fp-a"}
WEIGHTS = [1.0, 0.5, 0.1, 1.0]
PINNED_DEFAULT = ("2379d3db5abd98eba9cb", "252584ba8f2edd8abf33", "bdaeb925afe94275a9cd")  # before the group


def _cfg(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _keys(cfg, tmp_path):
    ctx = S.StageContext(cfg, DryCache(str(tmp_path)), None, "model-id", FPS)
    out = []
    for fn in (lambda: S.stage_detect(ctx, MC), lambda: S.stage_train(ctx, MC, WEIGHTS, None)):
        with pytest.raises(Missing) as e:
            fn()
        out.append(e.value.key)
    return (*out, identity.make(identity.config_part(cfg, None), FPS, "model-id")["sha256"][:20])


def test_the_default_job_keeps_its_keys_and_identity(tmp_path):
    cfg = _cfg()
    assert cfg.diagnosis.enabled is False
    assert _keys(cfg, tmp_path) == PINNED_DEFAULT
    assert "diagnosis" not in identity.config_part(cfg, None)


def test_enabled_changes_the_identity_not_the_detect_or_train_key(tmp_path):
    on = _keys(_cfg(["diagnosis.enabled=true"]), tmp_path)
    assert on[:2] == PINNED_DEFAULT[:2] and on[2] != PINNED_DEFAULT[2]
    assert identity.config_part(_cfg(["diagnosis.enabled=true"]), None)["diagnosis"]["enabled"] is True


def test_the_new_defaults_copy_is_the_schema_and_the_yaml():
    yml = yaml.safe_load((CONF / "diagnosis" / "default.yaml").read_text())
    assert defaults.NEW_DEFAULTS["diagnosis"] == settings.defaults() == yml
    schema.check_config(_cfg(["diagnosis.enabled=true", "diagnosis.n_runs=10"]))


def test_the_diagnose_key_holds_what_changes_the_rows():
    cfg = _cfg(["diagnosis.enabled=true"])
    ctx = S.StageContext(cfg, None, None, "model-id", FPS)
    base = stage.diagnose_key(ctx, MC, "train-key", settings.parse(S.plain(cfg.diagnosis)))

    def key(**kw):
        return stage.diagnose_key(ctx, MC, "train-key", settings.parse({**S.plain(cfg.diagnosis), **kw}))

    assert key(batch_size=4) == base and key(enabled=False) == base  # they change no row
    assert len({base, key(tau=0.3), key(n_runs=10), key(temperature=1.0), key(icl_shots=3)}) == 5
    assert stage.diagnose_key(ctx, MC, "other-train-key", settings.parse(S.plain(cfg.diagnosis))) != base


def test_the_group_is_checked_with_the_config_before_any_model():
    from kaft import fields
    from kaft.errors import ConfigError

    assert all(fields.help_of(settings.DiagnosisSettings).values())
    with pytest.raises(ConfigError, match=r"diagnosis\.tau"):
        schema.check_config(_cfg(["diagnosis.tau=2"]))
    with pytest.raises(ConfigError, match="diagnosis.n_run"):
        schema.check_config(_cfg(["+diagnosis.n_run=3"]))
