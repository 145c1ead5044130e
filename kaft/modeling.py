"""Loading the base model and tokenizer from a registry of sources, and naming them for the cache.

``identity`` is the model part of every cache key: it changes whenever the weights or tokenizer could differ
(hub id + revision, a local directory's file hashes; a plugin source names its own, e.g. the embedded testbed's
config + code version). A source is ``fn(model_cfg, cache_root, config) -> (path_or_hub_id, identity)``; ``config``
is the whole job config as a plain dict, so a source that builds its model (the testbed) reads its own section.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kaft import hub
from kaft.cache import make_key
from kaft.errors import KaftError
from kaft.registry import Registry

log = logging.getLogger(__name__)


class ModelError(KaftError):
    """A model config that cannot be loaded; the message says what to fix."""


DTYPES = ("float32", "bfloat16", "float16", "float64")  # what model.dtype may name besides auto / null


def _dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    if name not in DTYPES:  # checked by name: a config check must not cost the seconds of a torch import
        raise ModelError(f"unknown model dtype {name!r} (use float32, bfloat16, float16 or auto)")
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelError(f"unknown model dtype {name!r} (use float32, bfloat16, float16 or auto)") from None


def _dir_identity(path: Path) -> str:
    """Hash of a local model directory's small files and the sizes of its weight files (cheap but sensitive)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            if p.stat().st_size < 2_000_000:
                h.update(p.read_bytes())
            else:
                h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


#: name -> ``fn(model_cfg, cache_root, config, build=True) -> (path_or_hub_id, identity)``; with ``build=False``
#: a source that builds its model (a plugin's) returns its identity without building (path "" until built)
SOURCES: Registry[Callable[[Mapping, str, Mapping], tuple[str, str]]] = Registry("model source", error=ModelError)

#: name -> ``fn(model_cfg, config) -> (tokenizer, context_length)``: what a source that builds its model can tell
#: about it without building it (kaft.plausibility measures prompts with it before anything is built or loaded)
PREVIEWS: Registry[Callable[[Mapping, Mapping], tuple[Any, int]]] = Registry("model preview", error=ModelError)


@SOURCES.register("hub")
def _resolve_hub(cfg: Mapping, cache_root: str, config: Mapping, build: bool = True) -> tuple[str, str]:
    path = str(cfg["path"])
    local = Path(path).expanduser()
    if local.is_dir():
        _check_model_dir(local)
        return str(local), make_key("local", _dir_identity(local))
    try:  # before anything loads: offline and not cached, gated, no such revision, no room for the download
        hub.check_model(path, cfg.get("revision"))
    except hub.HubError as e:
        raise ModelError(str(e)) from None
    return path, make_key("hub", path, cfg.get("revision"))


# files any Hugging Face tokenizer directory holds at least one of
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _check_model_dir(local: Path) -> None:
    """A saved model directory must hold a config and a tokenizer (checked before anything is loaded)."""
    if not local.is_dir():
        raise ModelError(f"{local}: no such model directory; set model.path to a saved model (save_pretrained)")
    if not (local / "config.json").exists():
        raise ModelError(f"{local}: not a model directory (no config.json); set model.path to a saved model")
    if not any((local / f).exists() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{local}: no tokenizer in the model directory (none of {', '.join(TOKENIZER_FILES[:3])}, "
            f"...); save it there too: tokenizer.save_pretrained({str(local)!r})"
        )
    for weights in sorted(local.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise ModelError(
                f"{weights}: {problem}: the file is truncated or damaged; save the model again "
                f"(model.save_pretrained) or download it again"
            )


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (None if its header and size agree): its header -- 8 bytes of length,
    then JSON naming each tensor's byte range -- says how long the file must be, so a truncated copy (an interrupted
    download or copy, a full disk) is caught before transformers' loader fails on it with a traceback."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n)) if 8 + n <= size else None
    except (OSError, struct.error, ValueError) as e:
        return f"unreadable safetensors header ({e})"
    if header is None:
        return f"{size} bytes, shorter than its own header ({8 + n} bytes)"
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    need = 8 + n + max(ends, default=0)
    return None if size >= need else f"{size} bytes where its header says {need} bytes"


def check_device(device: str | None) -> None:
    """``device`` must exist on this machine before anything loads: ``device=cuda`` on a CPU-only torch would
    otherwise fail deep inside the model load, after the data and detection work (null picks cuda when torch sees
    a GPU, else cpu)."""
    if device in (None, "", "cpu"):
        return
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ModelError(
            f"device={device}: not a torch device; use device=cpu, device=cuda[:N] or device=null "
            f"(cuda when there is a GPU, else cpu)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"device={device}: this torch ({torch.__version__}) sees no CUDA GPU; use device=cpu, or "
            f"device=null to use a GPU only where there is one"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(
            f"device={device}: this machine has {torch.cuda.device_count()} visible CUDA GPU(s); use "
            f"device=cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or device=null"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device={device}: MPS is not available here; use device=cpu or device=null")


@SOURCES.register("local")
def _resolve_local(cfg: Mapping, cache_root: str, config: Mapping, build: bool = True) -> tuple[str, str]:
    local = Path(str(cfg.get("path", ""))).expanduser()
    _check_model_dir(local)
    return str(local), make_key("local", _dir_identity(local))


def check_model_cfg(cfg: Mapping) -> None:
    """Config-time checks, before anything is loaded."""
    src = cfg.get("source")
    SOURCES.get(src)  # an unknown name: one ModelError line listing the sources (plugins included)
    if src in ("hub", "local") and (not cfg.get("path") or cfg.get("path") == "???"):
        raise ModelError(f"model.path is required for a {src} model (a hub id or a local directory)")
    if cfg.get("dtype") not in (None, "auto", *DTYPES):
        _dtype(cfg.get("dtype"))  # the one-line error
    trust = cfg.get("trust_remote_code", False)
    if trust is not None and not isinstance(trust, bool):
        raise ModelError(f"model.trust_remote_code must be true or false, got {trust!r}")


def trust_remote_code(cfg: Mapping) -> bool:
    """Whether the model's own Python code (``auto_map`` in its config) may run: only when the model config says
    ``trust_remote_code: true`` explicitly (default false: a hub repo cannot run code on this machine)."""
    return cfg.get("trust_remote_code", False) is True


def resolve(model_cfg: Mapping, cache_root: str, config: Mapping, build: bool = True) -> tuple[str, str]:
    """``(path_or_hub_id, identity)`` for a model config. A source that builds its model does so on first use;
    ``build=False`` (kaft.sweep.plan, which may run on a login node without the jobs' GPUs) asks for the identity
    only; otherwise ``config``'s ``device`` is checked first."""
    check_model_cfg(model_cfg)
    if build:
        check_device((config or {}).get("device"))
    return SOURCES.get(model_cfg["source"])(model_cfg, cache_root, config, build=build)


def load(cfg: Mapping, path: str, device: str | None = None) -> tuple[Any, Any]:
    """Load model + tokenizer from what :func:`resolve` returned. Left padding: probing generates. A hub download
    that fails (network gone, gated, disk full) ends in one :class:`ModelError` line, not the hub's tracebacks."""
    try:
        return _load(cfg, path, device)
    except Exception as e:
        line = None if Path(path).expanduser().is_dir() else hub.explain(e, path, "model", cfg.get("revision"))
        if line is None:
            raise
        raise ModelError(line) from None


def _load(cfg: Mapping, path: str, device: str | None = None) -> tuple[Any, Any]:
    # lazy: torch takes seconds to import; a cached re-run never needs it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rev = cfg.get("revision")
    trust = trust_remote_code(cfg)
    if trust:
        log.warning("model.trust_remote_code=true: %s may run its own Python code", path)
    tok = AutoTokenizer.from_pretrained(path, revision=rev, trust_remote_code=trust)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        path, revision=rev, dtype=_dtype(cfg.get("dtype")), trust_remote_code=trust
    )
    model.to(device)
    model.eval()
    log.info("loaded model %s on %s (%.1fM parameters)", path, device, sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tok
