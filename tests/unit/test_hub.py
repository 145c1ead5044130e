"""kaft/hub.py: what a job says when a hub model or data set cannot be loaded. The cache probe runs on a real Hugging
Face cache layout (refs/ + snapshots/) holding a tiny saved model, offline, in a subprocess (the hub's offline flag
and cache path are read at import); the exception mapping on the hub's own exception classes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from kaft import hub

REPO = "org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hf_cache(tmp_path, model_dir, drop: tuple[str, ...] = ()):
    """An HF_HOME whose hub cache holds ``model_dir`` as ``REPO`` at ``main`` (files in ``drop`` left out)."""
    repo = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snap, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return tmp_path / "hf"


PROBE = textwrap.dedent("""
    import json, sys
    from kaft import hub, modeling
    out = {}
    for rev in (None, "v2"):
        try:
            hub.check_model(sys.argv[1], rev)
            out[str(rev)] = "ok"
        except hub.HubError as e:
            out[str(rev)] = str(e)
    if out["None"] == "ok":  # loads for real from the hub cache, offline
        model, tok = modeling.load({"source": "hub", "dtype": "float32"}, sys.argv[1], "cpu")
        out["loaded"] = type(model).__name__
    print(json.dumps(out))
""")


def _probe(hf_home):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", PROBE, REPO], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from helpers import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_a_complete_cached_snapshot_passes_and_loads_offline(tmp_path, tiny_dir):
    out = _probe(_hf_cache(tmp_path, tiny_dir))
    assert out["None"] == "ok" and out["loaded"] == "LlamaForCausalLM"
    # a revision the cache does not hold: named, with the download command for it
    assert f"model '{REPO}' (revision 'v2') is not in the local Hugging Face cache" in out["v2"]
    assert f"hf download {REPO} --revision v2" in out["v2"] and "HF_HUB_OFFLINE=1" in out["v2"]


def test_a_partial_snapshot_names_the_missing_files(tmp_path, tiny_dir):
    out = _probe(_hf_cache(tmp_path, tiny_dir, drop=("model.safetensors",)))
    assert "is only partly in the local Hugging Face cache" in out["None"], out
    assert "missing the weights (model.safetensors)" in out["None"] and f"hf download {REPO}" in out["None"]


def test_sharded_weights_need_every_shard(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert hub._missing_in_snapshot(tmp_path) == ["model-00002-of-00002.safetensors"]
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert hub._missing_in_snapshot(tmp_path) == []


def _http_error(cls, msg):
    try:
        import httpx2 as httpx  # what huggingface_hub's errors are built on in this version
    except ImportError:
        import httpx
    resp = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    return cls(msg, response=resp)


def _raised_from(inner: BaseException) -> BaseException:
    """``inner`` wrapped the way transformers wraps hub errors (an OSError raised from it)."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise OSError("We couldn't load this model") from e
    except OSError as outer:
        return outer


def test_loading_errors_map_to_one_line_with_what_to_do(monkeypatch):
    from huggingface_hub import errors

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    gated = hub.explain(
        _raised_from(_http_error(errors.GatedRepoError, "Access to model x is restricted")),
        "meta-llama/Meta-Llama-3-8B",
        "model",
    )
    assert gated.startswith(
        "model 'meta-llama/Meta-Llama-3-8B' is a gated repository: accept its licence at "
        "https://huggingface.co/meta-llama/Meta-Llama-3-8B and set HF_TOKEN"
    ), gated
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_123")
    assert "the token set here has no access yet" in hub.explain(
        _http_error(errors.GatedRepoError, "restricted"), "meta-llama/Meta-Llama-3-8B", "model"
    )
    rev = hub.explain(
        _raised_from(_http_error(errors.RevisionNotFoundError, "Revision Not Found")), "org/m", "model", revision="v9"
    )
    assert rev.startswith("model 'org/m' (revision 'v9'): that revision does not exist; check model.revision"), rev
    missing = hub.explain(_http_error(errors.RepositoryNotFoundError, "404"), "org/nope", "model")
    assert "does not exist on the Hugging Face hub, or it is private (set HF_TOKEN)" in missing
    disk = hub.explain(_raised_from(OSError(errno.ENOSPC, "No space left on device")), "org/m", "model")
    assert "out of disk space" in disk and "HF_HOME" in disk
    assert hub.explain(ValueError("shapes do not match"), "org/m", "model") is None  # not a loading problem


def test_dataset_errors(monkeypatch):
    from datasets.exceptions import DatasetNotFoundError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    offline = hub.dataset_error(
        ConnectionError("Couldn't reach 'GBaker/MedQA-USMLE-4-options' on the Hub"),
        "GBaker/MedQA-USMLE-4-options",
        None,
        "train",
        None,
        "config None, split 'train'",
    )
    assert "dataset 'GBaker/MedQA-USMLE-4-options' is not in the local Hugging Face cache" in offline
    assert "datasets.load_dataset('GBaker/MedQA-USMLE-4-options', split='train')" in offline
    gated = hub.dataset_error(
        DatasetNotFoundError("Dataset 'x/y' is a gated dataset on the Hub."), "x/y", "en", "test", None, ""
    )
    assert "is a gated repository: accept its licence at https://huggingface.co/datasets/x/y" in gated
    other = hub.dataset_error(KeyError("weird"), "x/y", None, "train", None, "config None, split 'train'")
    assert other == "hub dataset 'x/y' (config None, split 'train') could not be loaded: 'weird'"


def _llama_files(cached: bool = False):
    from huggingface_hub.file_download import DryRunFileInfo

    def f(name, size):
        return DryRunFileInfo(
            commit_hash=COMMIT,
            file_size=size,
            filename=name,
            local_path=f"/x/{name}",
            is_cached=cached,
            will_download=not cached,
        )

    return [
        f("config.json", 700),
        f("tokenizer.json", 9_000_000),
        f("original/consolidated.00.pth", 16 * 2**30),
        *[f(f"model-0000{i}-of-00004.safetensors", 4 * 2**30) for i in range(1, 5)],
    ]


def test_online_probe_sizes_the_download_against_free_disk(monkeypatch, tmp_path):
    """Online and not cached: the hub's file list (a dry run) must fit on the cache's disk; from_pretrained fetches
    the safetensors and small files, not original/*.pth."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_cached_snapshot", lambda repo, rev: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: _llama_files())
    assert hub._download_bytes(_llama_files()) == 16 * 2**30 + 9_000_700
    assert hub._download_bytes(_llama_files(cached=True)) == 0
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 * 2**30, 90 * 2**30, 10 * 2**30))
    with pytest.raises(hub.HubError, match=r"out of disk space \(the download needs 16\.0 GiB in .*hub, 10\.0 GiB"):
        hub.check_model("meta-llama/Meta-Llama-3-8B")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 * 2**30, 10 * 2**30, 90 * 2**30))
    hub.check_model("meta-llama/Meta-Llama-3-8B")  # fits: the load goes ahead

    def gated(*a, **k):
        from huggingface_hub import errors

        raise _http_error(errors.GatedRepoError, "Access to model meta-llama/Meta-Llama-3-8B is restricted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(hub.HubError, match="is a gated repository: accept its licence"):
        hub.check_model("meta-llama/Meta-Llama-3-8B")


def test_load_maps_hub_exceptions_to_one_model_error(monkeypatch, tmp_path):
    """An error while from_pretrained downloads (after the probe passed) is one ModelError line; an error loading a
    local directory is not the hub's and propagates as it is."""
    import transformers
    from huggingface_hub import errors

    from kaft import modeling

    class Failing:
        @classmethod
        def from_pretrained(cls, path, **kw):
            raise OSError("We couldn't connect to 'https://huggingface.co'") from errors.OfflineModeIsEnabled("off")

    monkeypatch.setattr(transformers, "AutoTokenizer", Failing)
    with pytest.raises(modeling.ModelError, match="model 'org/m' is not in the local Hugging Face cache"):
        modeling.load({"source": "hub"}, "org/m", "cpu")
    with pytest.raises(OSError, match="couldn't connect"):
        modeling.load({"source": "local"}, str(tmp_path), "cpu")
