"""Safety: no remote code unless a model config asks for it, weights only as safetensors, torch.load only with
weights_only=True, secrets from the environment never written to the run dir (results.json, logs, Hydra's saved
config, W&B files), and run dirs created with the user's umask."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_job_args
from test_pipeline import setup  # noqa: F401  (module fixture: tiny saved model + local data)

REPO = Path(__file__).resolve().parents[2]
SECRETS = {  # fake values, each unlike anything else in a run
    "WANDB_API_KEY": "0123456789fakewandbkey0123456789abcdefab",
    "HF_TOKEN": "hf_FAKEtokenQwErTy1234567890zxcvbnm",
    "HUGGING_FACE_HUB_TOKEN": "hf_FAKEhubtokenAsDfGh0987654321",
    "OPENAI_API_KEY": "sk-FAKEopenaiKEY-5u9x2k7c4m1",
    "KAFT_DB_PASSWORD": "FAKEpassw0rd!correct-horse",
    "SOME_SERVICE_SECRET": "FAKEsecretValue_8c1f0e2d",
}


# ----------------------------------------------------------------------------------------------- remote code
def test_every_model_config_keeps_remote_code_off():
    from hydra import compose, initialize_config_dir

    names = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
    assert "llama3_8b" in names and "local" in names
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for name in names:
            cfg = compose("config", overrides=[f"model={name}"])
            assert cfg.model.trust_remote_code is False, name


def test_load_passes_trust_remote_code_only_when_the_config_says_true(monkeypatch):
    import transformers

    from kaft import modeling

    calls = []

    class Fake:
        pad_token, eos_token = None, "</s>"

        @classmethod
        def from_pretrained(cls, path, **kw):
            calls.append(kw["trust_remote_code"])
            return cls()

        def to(self, device):
            return self

        def eval(self):
            return self

        def parameters(self):
            return []

    monkeypatch.setattr(transformers, "AutoTokenizer", Fake)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Fake)
    for cfg, want in (
        ({}, False),
        ({"trust_remote_code": False}, False),
        ({"trust_remote_code": None}, False),
        ({"trust_remote_code": True}, True),
    ):
        calls.clear()
        modeling.load({"source": "hub", "path": "x", **cfg}, "x", "cpu")
        assert calls == [want, want], cfg
    with pytest.raises(modeling.ModelError, match="trust_remote_code must be true or false"):
        modeling.check_model_cfg({"source": "hub", "path": "x", "trust_remote_code": "false"})


def _py_files():
    for d in ("kaft", "benchmarks", "analysis", "scripts", "hydra_plugins"):
        yield from (REPO / d).rglob("*.py")


def _calls(tree, attr: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node


def test_no_code_turns_remote_code_on_and_every_torch_load_is_weights_only():
    bad = []
    for path in _py_files():
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "load"):
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch":
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "trust_remote_code"
                and isinstance(node.value, ast.Constant)
                and node.value.value is True
            ):
                bad.append(f"{path.relative_to(REPO)}:{node.value.lineno}: trust_remote_code=True")
    assert not bad, bad


# ----------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def secret_run(setup):  # noqa: F811
    """One job (W&B on, offline) with fake secrets in the environment, one of them interpolated into the config,
    under umask 027."""
    env = {
        **os.environ,
        **SECRETS,
        "KAFT_CACHE_DIR": str(setup / "cache_safety"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    # a W&B service started by an earlier test in this process would write the job's W&B files with its own umask
    env.pop("WANDB_SERVICE", None)
    args = [
        *tiny_job_args(setup, "test.csv"),
        "train.save_steps=1",
        "logger=wandb",
        "+model.hub_token=${oc.env:HF_TOKEN}",
        "hydra.run.dir=safety_run",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "kaft.run", *args],
        cwd=setup,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return setup / "safety_run", setup / "cache_safety", out


def _all_files(root: Path):
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.slow
def test_secrets_never_reach_the_run_dir_results_or_wandb(secret_run):
    run_dir, cache, out = secret_run
    files = _all_files(run_dir)
    names = {p.relative_to(run_dir).as_posix() for p in files}
    assert {"results.json", "run.log", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"} <= names
    assert any(n.startswith("wandb/") and n.endswith(".wandb") for n in names)  # the offline W&B run
    leaks = [
        f"{p.relative_to(run_dir)}: {name}"
        for p in files + _all_files(cache)
        for name, value in SECRETS.items()
        if value.encode() in p.read_bytes()
    ]
    leaks += [f"stdout/stderr: {name}" for name, value in SECRETS.items() if value in out.stdout + out.stderr]
    assert not leaks, leaks
    res = json.loads((run_dir / "results.json").read_text())
    assert res["config"]["model"]["hub_token"] == "***"  # the interpolated secret was there, masked


@pytest.mark.slow
def test_adapters_and_checkpoints_are_safetensors(secret_run):
    run_dir, cache, _ = secret_run
    res = json.loads((run_dir / "results.json").read_text())
    adapter = cache / "train" / res["cache_keys"]["train"]
    assert (adapter / "adapter_model.safetensors").exists()
    pickled = [p for p in _all_files(cache) if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    assert not pickled, pickled  # nothing in the cache needs a pickle loader (checkpoints are gone: training finished)


@pytest.mark.slow
def test_run_dir_follows_the_umask_and_nothing_is_world_writable(secret_run):
    run_dir, cache, _ = secret_run
    too_open = []
    for p in [run_dir, *run_dir.rglob("*"), *cache.rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o027:  # umask 027: no group write, nothing for others
            too_open.append(f"{p}: {oct(mode)}")
    assert not too_open, too_open[:10]
    assert stat.S_IMODE((run_dir / "results.json").stat().st_mode) == 0o640


def test_redact_masks_secret_values_in_nested_results(monkeypatch):
    from kaft.track import redact, secret_values

    monkeypatch.setenv("MY_API_KEY", "abcdefgh12345")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # a TOKEN name with a short value: not a secret
    monkeypatch.setenv("UNRELATED", "abcdefgh12345-not-secret-by-name")
    assert "abcdefgh12345" in secret_values() and "false" not in secret_values()
    got = redact({"a": ["x abcdefgh12345 y", 1, None], "abcdefgh12345": {"b": "false"}})
    assert got == {"a": ["x *** y", 1, None], "***": {"b": "false"}}


def test_run_dir_names_mask_secrets(monkeypatch):
    """Hydra resolves ``${oc.env:HF_TOKEN}`` in an override before it names the run dir from the overrides."""
    from kaft.sweep.naming import job_subdir

    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    name = job_subdir(3, f"+model.hub_token={SECRETS['HF_TOKEN']},loss=kaft")
    assert SECRETS["HF_TOKEN"] not in name and name.startswith("3_+model.hub_token=***")
