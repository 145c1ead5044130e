"""A job that is only checked or skipped imports no torch: the re-run of a finished sweep is process start, config
composition and the identity check (issue 20 item 7; perf/stages.py ``--only sweep`` measures the ratio)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kaft.lazy import LazyModule

CHECK = """
import sys
from hydra import compose, initialize_config_dir
import kaft.run, kaft.job, kaft.schema, kaft.identity, kaft.sweep.preflight, kaft.train, kaft.losses
from kaft.sweep.plan import CONF
with initialize_config_dir(str(CONF), version_base="1.3"):
    for loss in ("kaft", "eaft", "dpo", "constant"):
        cfg = compose("config", overrides=[f"loss={loss}", "experiment=smoke"])
        kaft.schema.check_config(cfg)
        kaft.sweep.preflight.check_job_config(cfg)
heavy = sorted(m for m in ("torch", "transformers", "peft", "lm_eval", "datasets") if m in sys.modules)
print("heavy:", heavy)
"""


def test_checking_every_loss_config_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "heavy: []" in out.stdout, out.stdout


def test_a_lazy_module_imports_on_first_attribute_and_then_reads_plainly():
    json_mod = LazyModule("json")
    assert "dumps" not in vars(json_mod)
    assert json_mod.dumps([1]) == "[1]"
    assert "dumps" in vars(json_mod)  # cached: the next read is a plain attribute read
    with pytest.raises(AttributeError):
        json_mod.no_such_name  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        LazyModule("kaft_no_such_module").x  # noqa: B018


def test_the_train_package_loads_its_machinery_on_first_use():
    import kaft.train as train

    assert callable(train.train_lora) and train.FEEDS is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        train.nope  # noqa: B018
