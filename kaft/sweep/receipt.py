"""The sweep receipt: a finished sweep's re-run served without starting Hydra (issue 20 item 7).

A re-run of a finished sweep composes every job's config, loads every job's data to compare fingerprints, and only
then finds that every job is done (:mod:`kaft.identity`). Python, Hydra's start and one composition per job cost
more than 0.05x of a small sweep, so the cheap answer has to come before Hydra is imported. When a multirun ends with
every job done, ``python -m kaft.run`` writes a receipt (``<KAFT_CACHE_DIR or ~/.cache/kaft>/receipts/<key>.json``).
Its key is a digest of everything the composed configs can depend on: the command line, the working directory, the
content of every file under the repository's ``conf/``, ``sweeps/``, ``kaft/``, ``analysis/`` and
``hydra_plugins/`` (the config search path and the code that composes, checks and summarises), the environment
variables kaft or conf/ reads (``KAFT_*``, ``HYDRA_*``, ``HOME``, ``PYTHONPATH`` and every ``oc.env`` name in conf/ or
the command line), the Python build, ``sys.path`` and the names (versions included) of the installed packages. The
receipt records ``(size, mtime_ns)`` of every file under the sweep dir, the results.json digests, and of every file
the jobs' data and models came from; the text the sweep's end printed (summary table, paper-table note) is replayed.

Any doubt falls through to the normal path, unchanged: no receipt, another key, a recorded file changed, added or
gone, a flag (``--cfg``, ``--info``, ``-cd`` ...), a ``hydra.searchpath`` / ``hydra.callbacks`` override,
``KAFT_NO_RECEIPT=1``. No receipt is written for a sweep with a job not done, a time-dependent config (``${now:``),
a logger other than ``none`` (the normal re-run logs again), a hub data set or model (its content is not a local
file), or a data or model file modified after the sweep started. This module imports only the standard library
at its top: the fast path must not pay for Hydra, OmegaConf or torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

VERSION = 1
OFF = "KAFT_NO_RECEIPT"  # set to 1: never serve nor write a receipt
ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("conf", "sweeps", "kaft", "analysis", "hydra_plugins")
ENV_PREFIXES = ("KAFT_", "HYDRA_")
ENV_NAMES = ("HOME", "PYTHONPATH")
UNSAFE_OVERRIDES = ("hydra.searchpath", "hydra.callbacks", "hydra/callbacks")
LOCAL_SOURCES = ("local", "testbed")  # data / model sources whose content is a local file (or the config itself)

#: the key computed before Hydra started (written with the receipt) and the sweep end's printed text
STATE: dict[str, Any] = {"key": None, "start_ns": None, "tee": None}


# ----------------------------------------------------------------------------------------------- the key
def eligible(argv: list[str]) -> bool:
    """A multirun with plain overrides only: any flag (``--cfg``, ``--info``, ``-cd`` ...) or a search-path or
    callback override goes the normal way, since what Hydra does with it is not in the key."""
    args = argv[1:]
    if os.environ.get(OFF, "").strip() not in ("", "0") or not ({"-m", "--multirun"} & set(args)):
        return False
    for a in args:
        if a in ("-m", "--multirun"):
            continue
        if a.startswith("-") or a.lstrip("+~").startswith(UNSAFE_OVERRIDES):
            return False
    return True


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        return [root] if root.exists() else []
    out = []
    for here, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out += [Path(here) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return out


def _env(texts: list[str]) -> dict[str, str]:
    names = {m for t in texts for m in re.findall(r"oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)", t)}
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith(ENV_PREFIXES) or k in ENV_NAMES or k in names and k != OFF
    }


def _packages() -> list[str]:
    """The installed distributions' names (``name-version.dist-info``): an install or upgrade changes the key."""
    out = []
    for p in sys.path:
        if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p):
            out += sorted(n for n in os.listdir(p) if n.endswith((".dist-info", ".egg-info", ".pth", ".egg-link")))
    return out


def key(argv: list[str], root: Path = ROOT) -> str:
    """The digest of everything the sweep's composed configs and its re-run's decisions can depend on."""
    h = hashlib.sha256()
    texts = list(argv)
    for src in SOURCES:
        for f in _files(root / src):
            data = f.read_bytes()
            h.update(f"{f.relative_to(root)}\0{len(data)}\0".encode())
            h.update(data)
            if f.suffix in (".yaml", ".yml"):
                texts.append(data.decode("utf-8", "replace"))
    head = [VERSION, list(argv[1:]), os.getcwd(), str(root), sys.version, sys.executable, sys.path, _packages()]
    h.update(json.dumps([head, _env(texts)], sort_keys=True).encode())
    return h.hexdigest()


def receipts_dir() -> Path:
    """Where receipts live: found before any config is composed, so from the environment only."""
    return Path(os.environ.get("KAFT_CACHE_DIR") or Path.home() / ".cache" / "kaft").expanduser() / "receipts"


# ----------------------------------------------------------------------------------------------- checking files
def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def sweep_files(sweep_dir: Path) -> dict[str, list[int] | None]:
    """Every file under the sweep dir, with its ``(size, mtime_ns)``: a file changed, added or removed there (a
    results.json, a job's ``.hydra/``, the summary) sends the re-run the normal way."""
    return {str(f): _stat(f) for f in _files(sweep_dir)}


def _intact(rec: dict) -> bool:
    sweep_dir = Path(rec["sweep_dir"])
    if not sweep_dir.is_dir() or sweep_files(sweep_dir) != rec["sweep_files"]:
        return False
    if any(_stat(Path(p)) != st for p, st in rec["inputs"].items()):
        return False
    return all(_digest(Path(p)) == d for p, d in rec["results"].items())


def serve(argv: list[str], root: Path = ROOT) -> None:
    """Exit with the finished sweep's status and its printed summary when a receipt vouches for it; return (and
    remember the key for :func:`write`) to let the normal path run."""
    if not eligible(argv):
        return
    try:
        STATE.update(key=key(argv, root), start_ns=time.time_ns())
        path = receipts_dir() / f"{STATE['key']}.json"
        rec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if not rec or rec.get("version") != VERSION or rec.get("key") != STATE["key"] or not _intact(rec):
            return
    except Exception:  # noqa: BLE001 - any doubt (unreadable receipt, a file that cannot be read): the normal path
        return
    sys.stdout.write(rec["text"])
    sys.stdout.flush()
    print(
        f"kaft: all {len(rec['results'])} jobs of {rec['sweep_dir']} are done with the same config, data, model and "
        f"code: served from the sweep receipt {path} ({OFF}=1 re-checks every job through Hydra)",
        file=sys.stderr,
    )
    raise SystemExit(0)


# ----------------------------------------------------------------------------------------------- writing
class _Tee(io.TextIOBase):
    """sys.stdout while the sweep's end prints: what it prints is what a served re-run prints again."""

    def __init__(self, inner: Any):
        self.inner, self.text = inner, io.StringIO()

    def write(self, s: str) -> int:
        self.text.write(s)
        return self.inner.write(s)

    def flush(self) -> None:
        self.inner.flush()


def start_capture() -> None:
    """Called by the summary callback when the sweep ends (the first sweep-end callback to run): only a CLI run
    that computed a key captures."""
    if STATE["key"] and STATE["tee"] is None:
        STATE["tee"] = _Tee(sys.stdout)
        sys.stdout = STATE["tee"]


def stop_capture() -> str | None:
    tee, STATE["tee"] = STATE["tee"], None
    if tee is None:
        return None
    if sys.stdout is tee:
        sys.stdout = tee.inner
    return tee.text.getvalue()


def _spec_inputs(spec: Any) -> list[Path] | None:
    """The local files a data or model spec reads; None for a source whose content is not a local file."""
    if not isinstance(spec, dict):
        return []
    src = spec.get("source", "local")
    if src not in LOCAL_SOURCES:
        return None
    paths = [spec.get("path")] if src == "local" else []
    paths += [(spec.get("join") or {}).get("path")] if isinstance(spec.get("join"), dict) else []
    return [f for p in paths if p for f in _files(Path(str(p)).expanduser())]


def job_inputs(res: dict) -> list[Path] | None:
    """Every local file a done job's identity depended on (its training set, benchmarks and model), from its
    results.json ``config``; None when the job cannot be vouched for (a hub source, a logger, no config)."""
    cfg = res.get("config")
    if not isinstance(cfg, dict) or res.get("status") != "done" or not res.get("metrics"):
        return None
    if (cfg.get("logger") or {}).get("name", "none") != "none" or cfg.get("force"):
        return None
    ds = cfg.get("dataset") or {}
    specs = [ds.get("train"), *(ds.get("eval") or {}).values(), cfg.get("model")]
    out: list[Path] = []
    for spec in specs:
        files = _spec_inputs(spec)
        if files is None:
            return None
        out += files
    return out


def build(sweep_dir: Path, text: str, start_ns: int) -> dict | None:
    """The receipt of a finished sweep, or None when one of its jobs cannot be vouched for."""
    from kaft.results import RESULTS_FILE, job_dirs, load_results

    jobs = job_dirs(sweep_dir)
    inputs, results = {}, {}
    for d in jobs:
        res, _ = load_results(d)
        files = job_inputs(res) if res else None
        if files is None:
            return None
        for f in files:
            st = _stat(f)
            if st is None or st[1] > start_ns:  # gone, or edited while the sweep ran: what did the job read?
                return None
            inputs[str(f)] = st
        results[str(d / RESULTS_FILE)] = _digest(d / RESULTS_FILE)
    if not jobs:
        return None
    return {"version": VERSION, "key": STATE["key"], "sweep_dir": str(sweep_dir), "text": text, "inputs": inputs,
            "results": results}  # fmt: skip


def write(sweep_dir: str | None, text: str | None, *, timeless: bool, failed: int) -> Path | None:
    """Write the receipt of the sweep that just ended (atomically), when every job is done and nothing in it
    depends on the time; the sweep dir's files are recorded last, after the summary wrote its files. ``text``: what
    the sweep's end printed (:func:`stop_capture`)."""
    if not (STATE["key"] and sweep_dir and timeless and not failed and text is not None):
        return None
    try:
        rec = build(Path(sweep_dir).resolve(), text, STATE["start_ns"])
        if rec is None:
            return None
        rec["sweep_files"] = sweep_files(Path(rec["sweep_dir"]))
        out = receipts_dir() / f"{STATE['key']}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec), encoding="utf-8")
        os.replace(tmp, out)
        return out
    except OSError:  # a read-only cache: the next re-run takes the normal path
        return None


__all__ = ["OFF", "STATE", "build", "eligible", "job_inputs", "key", "serve", "start_capture", "stop_capture", "write"]
