"""The testbed's targets over seeds x precisions x CPU kernel families: ``python -m kaft.testbed.matrix``.

Each cell builds the testbed model from scratch in a fresh process (the kernel family is fixed when torch first
dispatches, so it is set through the environment: ``ATEN_CPU_CAPABILITY`` for PyTorch's own kernels, optionally
``MKL_CBWR`` / ``ONEDNN_MAX_CPU_ISA`` for its BLAS and oneDNN), measures it with ``python -m kaft.testbed.report``
and runs the default job ``python -m kaft.run`` on it, then checks :func:`kaft.testbed.report.targets`. Cells of
one capability share a cache of their own (the model cache key is the config, not the CPU), so nothing built
under one kernel family is reused under another. bf16 cells are skipped on CPUs without AVX-512 BF16.

    python -m kaft.testbed.matrix --seeds 0-4 --precision fp32,bf16 --capability native,avx2 --out matrix.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kaft.outputs import OutputError, check_target, write_text
from kaft.testbed.config import resolve_config
from kaft.testbed.report import targets

#: MKL_CBWR and ONEDNN_MAX_CPU_ISA values that match each forced ATEN_CPU_CAPABILITY
BLAS_PINS = {"default": ("COMPATIBLE", "SSE41"), "avx2": ("AVX2", "AVX2"), "avx512": ("AVX512", "AVX512_CORE")}


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _env(capability: str, pin_blas: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"):
        env.pop(k, None)
    if capability != "native":
        env["ATEN_CPU_CAPABILITY"] = capability
        if pin_blas:
            env["MKL_CBWR"], env["ONEDNN_MAX_CPU_ISA"] = BLAS_PINS[capability]
    return env


def _report(seed: int, precision: str, cache: Path, env: dict, tmp: Path) -> dict:
    """The cell's model built (or reused) and measured by ``python -m kaft.testbed.report`` in a fresh process (so
    that ``env`` fixes its kernel family); its numbers with the wall time of that call."""
    conf = tmp / "testbed.json"  # JSON is YAML: the report reads it with yaml.safe_load
    conf.write_text(json.dumps({"seed": seed, "pretrain": {"precision": precision}}))
    out = tmp / "report.json"
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "kaft.testbed.report", "--cache", str(cache), "--config", str(conf), "--json", str(out)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads(out.read_text())
    res["report_seconds"] = time.time() - t0
    return res


def _job(seed: int, precision: str, cache: Path, env: dict, tmp: Path) -> tuple[dict, dict]:
    """The default job ``python -m kaft.run`` on the cell's model in a fresh process: its base and tuned averages
    with its wall time, and the ``detection`` block of its results.json (what :func:`targets` checks)."""
    t1 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kaft.run",
            f"seed={seed}",
            f"testbed.pretrain.precision={precision}",
            f"cache_dir={cache}",
            "logger=none",
            "progress=false",
            f"hydra.run.dir={tmp}/run",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    done = json.loads((tmp / "run" / "results.json").read_text())
    summary = {
        "base": done["base_metrics"]["average"],
        "tuned": done["metrics"]["average"],
        "seconds": time.time() - t1,
    }
    return summary, done["detection"]


def cell(seed: int, precision: str, capability: str, cache: Path, pin_blas: bool = False, job: bool = True) -> dict:
    """Build, measure and (``job``) run the default job for one cell; returns its numbers and targets."""
    env = _env(capability, pin_blas)
    with tempfile.TemporaryDirectory() as tmp:
        res = _report(seed, precision, cache, env, Path(tmp))
        det = None
        if job:
            res["job"], det = _job(seed, precision, cache, env, Path(tmp))
    release = float(resolve_config({})["model"]["binding"]["release_accuracy"])
    return {
        "seed": seed,
        "precision": precision,
        "capability": capability,
        "built_with": res["build"].get("build_env", {}).get("cpu_capability"),
        "build_seconds": res["build"].get("build_seconds"),
        "targets": targets(res, release, det),
        "job": res.get("job"),
        "report": {
            k: res[k] for k in ("acc", "acc0", "pooled", "score_by_kind", "auroc_contradict", "readout") if k in res
        },
    }


def table(cells: Sequence[dict]) -> str:
    """A Markdown table: one row per cell, one column per target (value, and a cross where it is missed)."""
    if not cells:
        return "(no cells)"
    names = [t["name"] for t in max(cells, key=lambda c: len(c["targets"]))["targets"]]
    head = ["seed", "precision", "kernels", "build s"] + names + ["job: base → tuned average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        by = {t["name"]: t for t in c["targets"]}
        vals = [f"{by[n]['value']:.3f}{'' if by[n]['ok'] else ' ✗'}" if n in by else "—" for n in names]
        job = c.get("job")
        vals.append(f"{job['base']:.3f} → {job['tuned']:.3f}" if job else "—")
        lines.append(
            f"| {c['seed']} | {c['precision']} | {c['built_with']} | {c['build_seconds']:.0f} | "
            + " | ".join(vals)
            + " |"
        )
    missed = sum(not t["ok"] for c in cells for t in c["targets"])
    targets_row = "targets: " + "; ".join(f"{t['name']} {t['target']}" for t in cells[0]["targets"])
    return "\n".join(lines + ["", targets_row, f"missed: {missed}"])


def main(argv: Sequence[str] | None = None) -> list[dict]:
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--capability", default="native,avx2", help="native (what torch picks) or a forced level")
    ap.add_argument("--pin-blas", action="store_true", help="also pin MKL (MKL_CBWR) and oneDNN to that level")
    ap.add_argument("--no-job", action="store_true", help="skip the default job (report targets only)")
    ap.add_argument("--cache", default=None, help="cache root (default: a fresh temporary directory)")
    ap.add_argument("--out", default=None, help="also write the table (.md) and the numbers (.json) here")
    args = ap.parse_args(argv)
    try:
        for ext in (".md", ".json") if args.out else ():
            check_target(Path(args.out).with_suffix(ext), "kaft.testbed.matrix")  # before hours of runs
    except OutputError as e:
        sys.exit(f"kaft: error: {e}")
    root = Path(args.cache or tempfile.mkdtemp(prefix="kaft-matrix-"))
    bf16_ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    cells = []
    for cap in args.capability.split(","):
        for prec in args.precision.split(","):
            if prec == "bf16" and not bf16_ok:
                print("[matrix] bf16 skipped: this CPU has no AVX-512 BF16", flush=True)
                continue
            for seed in _seeds(args.seeds):
                c = cell(seed, prec, cap, root / cap, args.pin_blas, not args.no_job)
                cells.append(c)
                print(
                    f"[matrix] seed {seed} {prec} {cap}: "
                    + ", ".join(f"{t['name']} {t['value']:.3f}{'' if t['ok'] else ' MISSED'}" for t in c["targets"]),
                    flush=True,
                )
    text = table(cells)
    print(text)
    if args.out:  # never over a file kaft did not write (kaft/outputs.py)
        write_text(Path(args.out).with_suffix(".md"), text + "\n", "kaft.testbed.matrix")
        write_text(Path(args.out).with_suffix(".json"), json.dumps(cells, indent=2), "kaft.testbed.matrix")
    return cells


if __name__ == "__main__":
    main()
