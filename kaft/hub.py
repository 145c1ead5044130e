"""Can a hub model or data set be loaded here? One actionable line when not, before anything loads.

Compute nodes are often offline, Llama 3 is gated, and a revision or a disk can be missing. Without these checks a
job ends in a chain of tracebacks from huggingface_hub and transformers, after it has already waited in a queue.
:func:`check_model` probes the local Hugging Face cache (and, when online, the hub: access, revision, size against
free disk) without loading anything; :func:`explain` turns an exception raised while loading into the same kind of
line, for whatever the probe could not foresee.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from kaft.errors import KaftError

# what transformers' from_pretrained reads from a model repo (weights: safetensors if the repo has them, else .bin)
CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
SMALL_PATTERNS = ("*.json", "*.model", "*.txt", "*.tiktoken", "*.py")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class HubError(KaftError):
    """A hub model or data set that cannot be loaded here; the message names the cause and what to do."""


def offline() -> bool:
    from huggingface_hub import constants  # lazy: huggingface_hub is slow to import; needed only for hub ids

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache() -> str:
    from huggingface_hub import constants  # lazy: huggingface_hub is slow to import; needed only for hub ids

    return str(constants.HF_HUB_CACHE)


def download_cmd(
    repo: str, kind: str, revision: str | None = None, name: str | None = None, split: str | None = None
) -> str:
    """The command that puts ``repo`` into the cache a job reads (run it where there is network, same HF_HOME)."""
    if kind == "dataset":  # datasets reads its own prepared cache offline, not the hub's snapshot: load it once
        args = (
            [repr(repo)]
            + ([repr(name)] if name else [])
            + ([f"split={split!r}"] if split else [])
            + ([f"revision={revision!r}"] if revision else [])
        )
        return f'python -c "import datasets; datasets.load_dataset({", ".join(args)})"'
    return f"hf download {repo}" + (f" --revision {revision}" if revision else "")


def _where() -> str:
    home = os.environ.get("HF_HOME")
    return f"HF_HOME={home}" if home else f"the cache {hub_cache()}"


def _gated_hint(repo: str, kind: str) -> str:
    url = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo}"
    has_token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    return (
        f"accept its licence at {url} with the account whose token is in HF_TOKEN (the token set here has no "
        f"access yet)"
        if has_token
        else f"accept its licence at {url} and set HF_TOKEN to a token of that account (or run `hf auth login`)"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _cause(exc: BaseException) -> str | None:
    """gated | not_found | revision | offline | disk | None, from the exception and everything it chains to."""
    from huggingface_hub import errors  # lazy: huggingface_hub is slow to import; needed only for hub ids

    for e in _chain(exc):
        text = str(e).lower()
        if isinstance(e, errors.GatedRepoError) or any(w in text for w in ("gated repo", "gated dataset", "is gated")):
            return "gated"
        if isinstance(e, errors.RevisionNotFoundError) or "invalid revision" in text:
            return "revision"
        if isinstance(e, OSError) and (e.errno == errno.ENOSPC or "no space left" in text):
            return "disk"
        if (
            isinstance(e, (errors.RepositoryNotFoundError,))
            or type(e).__name__ == "DatasetNotFoundError"
            or "is not a valid model identifier" in text
        ):
            return "not_found"
        if (
            isinstance(e, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, ConnectionError, TimeoutError))
            or "couldn't connect" in text
            or "couldn't reach" in text
            or any(w in type(e).__name__.lower() for w in ("connect", "timeout"))
        ):  # httpx's transport errors
            return "offline"
    return None


def message(
    cause: str,
    repo: str,
    kind: str,
    revision: str | None = None,
    name: str | None = None,
    split: str | None = None,
    detail: str = "",
) -> str:
    """The one line for ``cause`` (see :func:`_cause`); ``kind`` is model or dataset."""
    what = f"{kind} {repo!r}" + (f" (revision {revision!r})" if revision else "")
    cmd = download_cmd(repo, kind, revision, name, split)
    if cause == "gated":
        return f"{what} is a gated repository: {_gated_hint(repo, kind)}"
    if cause == "not_found":
        return (
            f"{what} does not exist on the Hugging Face hub, or it is private (set HF_TOKEN); check the "
            f"{kind} config's path"
        )
    if cause == "revision":
        key = "model.revision" if kind == "model" else "the data set spec's revision"
        return f"{what}: that revision does not exist{detail}; check {key} (a branch, tag or commit hash)"
    if cause == "disk":
        return (
            f"{what}: out of disk space{detail}; free space or point HF_HOME (or HF_HUB_CACHE) at a larger filesystem"
        )
    if cause == "offline":
        flags = [v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
        state = (
            f"the hub is offline here ({', '.join(f + '=1' for f in flags)})"
            if flags
            else "the hub could not be reached"
        )
        where = (
            f"is only partly in the local Hugging Face cache ({_where()}; {detail})"
            if detail
            else f"is not in the local Hugging Face cache ({_where()})"
        )
        return (
            f"{what} {where} and {state}; on a machine with network (a login node), with the same HF_HOME, "
            f"run: {cmd} (if the repo is gated, accept its licence and set HF_TOKEN first)"
        )
    raise ValueError(f"unknown cause {cause!r}")


def explain(
    exc: BaseException,
    repo: str,
    kind: str,
    revision: str | None = None,
    name: str | None = None,
    split: str | None = None,
) -> str | None:
    """The one line for an exception raised while loading ``repo``, or None when it is not a loading problem."""
    cause = _cause(exc)
    return message(cause, repo, kind, revision, name, split) if cause else None


def dataset_error(exc: BaseException, repo: str, name: str | None, split: str, revision: str | None, what: str) -> str:
    """The one line for a hub data set that failed to load (``what`` says which config and split it was)."""
    line = explain(exc, repo, "dataset", revision, name, split)
    if line:
        return line
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"hub dataset {repo!r} ({what}) could not be loaded: {first}"


# ----------------------------------------------------------------------------------------------- models
def _missing_in_snapshot(folder: Path) -> list[str]:
    """Files from_pretrained needs that a cached snapshot lacks (config, a tokenizer, every weight shard)."""
    missing = [f for f in CONFIG_FILES if not (folder / f).exists()]
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        missing.append("a tokenizer file (tokenizer.json, tokenizer.model, ...)")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).exists():
            shards = sorted(set(json.loads((folder / index_name).read_text()).get("weight_map", {}).values()))
            return missing + [s for s in shards if not (folder / s).exists()]
    if not any((folder / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
        missing.append("the weights (model.safetensors)")
    return missing


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    # lazy: huggingface_hub is slow to import; needed only for hub ids
    from huggingface_hub import errors, snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except (errors.LocalEntryNotFoundError, OSError, ValueError):
        return None


def _download_bytes(files: list) -> int:
    """Bytes from_pretrained would fetch: the small files, and safetensors weights if any, else .bin ones."""
    names = [f.filename for f in files if "/" not in f.filename]  # not original/ or other sub-folders
    weights = [n for n in names if n.endswith(".safetensors")] or [n for n in names if n.endswith(".bin")]
    wanted = set(weights) | {n for n in names if any(fnmatch.fnmatch(n, p) for p in SMALL_PATTERNS)}
    return sum((f.file_size or 0) for f in files if f.filename in wanted and f.will_download)


def _check_online(repo: str, revision: str | None) -> None:
    """Access, revision and free disk, from the hub's file list (a dry run: nothing is downloaded)."""
    from huggingface_hub import snapshot_download  # lazy: huggingface_hub is slow to import; needed only for hub ids

    try:
        files = snapshot_download(repo, revision=revision, dry_run=True)
    except Exception as e:  # noqa: BLE001 - classified; anything else is left to the load itself
        cause = _cause(e)
        if cause:
            raise HubError(message(cause, repo, "model", revision)) from None
        return
    need = _download_bytes(list(files))
    cache = Path(hub_cache())
    probe = next((p for p in [cache, *cache.parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if need > free:
        raise HubError(
            message(
                "disk",
                repo,
                "model",
                revision,
                detail=f" (the download needs {need / 2**30:.1f} GiB in {cache}, {free / 2**30:.1f} GiB are free)",
            )
        )


def check_model(repo: str, revision: str | None = None) -> None:
    """Raise :class:`HubError` unless hub model ``repo`` can be loaded here: complete in the local cache, or (online)
    accessible, at that revision, with room for the download."""
    snap = _cached_snapshot(repo, revision)
    if snap is not None:
        missing = _missing_in_snapshot(snap)
        if not missing:
            return
        if offline():
            raise HubError(message("offline", repo, "model", revision, detail=f"missing {', '.join(missing[:3])}"))
    elif offline():
        raise HubError(message("offline", repo, "model", revision))
    _check_online(repo, revision)
