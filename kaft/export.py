"""``python -m kaft.export <run dir | sweep dir> [--out DIR]`` — a finished job's conflict scores, for other trainers.

Writes the training set with each item's conflict Score, subset, reward and the model's own answers (majority and
distribution) as ``train.parquet``, ``train.jsonl`` and a ``datasets`` Dataset (``dataset/``, ``save_to_disk``), so
that TRL, LLaMA-Factory or axolotl can drop the conflicting items or weight them without running kaft's trainer.

Nothing is recomputed: the scores come from the detection and partition artifacts that the job's ``results.json``
names (``cache_keys``) in the kaft cache, the questions from the job's training data, reloaded with its config and
checked against the fingerprint the job recorded. A sweep dir gets one export per finished job, in a folder named
like the job's (its ``reward`` follows that job's loss), plus ``index.json``. Everything is written into a temporary
directory that is renamed into place, so a failed export leaves nothing behind.

An export is recognised by its manifest, ``export.json`` at its top: ``"kind": "kaft-export"`` and ``"files"``, every
file kaft wrote there (relative paths). ``--out`` may name a new path or an empty folder; ``--force`` replaces only a
folder whose manifest says it is a kaft export and which holds nothing but the files listed in it. Anything else --
a folder holding other files (a run dir, a sweep dir, a parent of runs, an export someone added files to, one written
before the manifest existed), a regular file, a path below a regular file, a symbolic link -- is refused with one
``kaft: error:`` line and nothing is touched: kaft never deletes what it did not write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from kaft import data as data_mod
from kaft import detection as detect_mod
from kaft.cache import atomic_write_json, verify
from kaft.diagnosis import columns as diagnosis_columns
from kaft.prompts import DEFAULT_INSTRUCTION, LETTERS, answer_text, format_question
from kaft.results import RESULTS_FILE, load_results, result_dirs
from kaft.stages import load_train, partition_key

#: column -> what it holds (also written to export.json)
COLUMNS = {
    "id": "the item's id in the training set",
    "question": "question text",
    "options": "option texts, in the data set's order",
    "answer": "gold option index",
    "answer_letter": "gold option letter",
    "subject": "subject (or null)",
    "domain": "domain (or null)",
    "prompt": "the zero-shot prompt kaft trains on (ends in 'Answer:')",
    "completion": "the target: ' ' + letter",
    "score": "conflict Score: share of the model's answers that were gold (0 = conflicts most)",
    "subset": "conflict subset index (0 = most conflicts)",
    "subset_name": "wrong / might-wrong / might-right / right for K = 4, subset1..K otherwise",
    "reward": "the per-sample reward R_i the job's loss gave the item (loss=kaft: Eq. 2)",
    "kaft_reward": "KaFT's Eq. 2 reward of the item's subset (partition.rewards), whatever loss the job ran",
    "majority_answer": "the model's most likely option index (-1 when no answer parsed)",
    "majority_letter": "its letter (null when none)",
    "answer_dist": "the model's probability of each option: sampled answers' shares, or the exact letter "
    "probabilities (what is left of 1 went to unparsable answers)",
    "dist_source": "samples | exact | letter_probs (icl)",
    "n_samples": "sampled answers behind answer_dist (0 for exact)",
    "n_unparsed": "sampled answers that named no option",
    # the post-training diagnosis (diagnosis.enabled=true; null otherwise): kaft.diagnosis.columns
    **{col: what for col, (_, _, what) in diagnosis_columns.EXPORT_COLUMNS.items()},
}


class ExportError(ValueError):
    """Bad input for an export; the message says what to do."""


# ----------------------------------------------------------------------------------------------- finding jobs
def _read_results(run_dir: Path) -> dict:
    res, problem = load_results(run_dir)
    if res is None:
        raise ExportError(f"{run_dir}: {problem or RESULTS_FILE + ': missing'}; re-run the job")
    return res


def find_jobs(path: Path) -> tuple[list[tuple[Path, dict]], bool]:
    """``([(run_dir, results)], is_sweep)``: the dir itself when it holds results.json, else its job subdirs (the
    job dirs the sweep status and summary see, :func:`kaft.results.result_dirs`)."""
    if not path.is_dir():
        raise ExportError(f"{path}: no such directory; pass a run dir (holding results.json) or a sweep dir")
    jobs = [(d, _read_results(d)) for d in result_dirs(path)]
    if jobs and jobs[0][0] == path:
        return jobs, False
    if not jobs:
        raise ExportError(
            f"{path}: not a kaft run or sweep directory (no results.json in it or its job "
            f"subdirectories); pass the directory a job printed ('results: .../results.json')"
        )
    return jobs, True


# ----------------------------------------------------------------------------------------------- one job's data
def _artifact(cache_root: Path, stage: str, key: str | None, run_dir: Path) -> Path:
    path = cache_root / stage / str(key)
    problem = "not in the cache" if not key or not path.is_dir() else verify(path)
    if problem:
        state = problem if problem == "not in the cache" else f"damaged ({problem})"
        raise ExportError(
            f"{run_dir}: the {stage} artifact {stage}/{key} is {state} at {cache_root}; pass "
            f"--cache-dir if the run used another cache (its KAFT_CACHE_DIR), or re-run the job with "
            f"force=true to recompute it"
        )
    return path


def _train_items(cfg, records: list[dict], results: dict, run_dir: Path) -> list:
    """The job's training items in detection order: from the records (mc_conversion keeps them) or reloaded."""
    if records and "item" in records[0]:
        return [data_mod.MCItem.from_dict(r["item"]) for r in records]
    items = load_train(cfg)
    want = (results.get("data") or {}).get("fingerprints", {}).get("train")
    have = data_mod.fingerprint(items)
    if want and have != want:
        raise ExportError(
            f"{run_dir}: the training data changed since the job ran (fingerprint {have}, the job's "
            f"{want}); restore it, or re-run the job with force=true and export again"
        )
    if [it.id for it in items] != [r["id"] for r in records]:
        raise ExportError(
            f"{run_dir}: the detection records do not match the training set's ids; re-run the job with force=true"
        )
    return items


def _distribution(rec: dict, n_options: int) -> tuple[list[float], str, int, int]:
    """``(answer_dist, dist_source, n_samples, n_unparsed)`` from whichever estimate the record holds."""
    if "letter_probs" in rec:
        return [float(p) for p in rec["letter_probs"]], "letter_probs", 0, 0
    if "probs" in rec:
        per = rec["probs"]
        return [sum(p[a] for p in per) / len(per) for a in range(n_options)], "exact", 0, 0
    flat = [a for order in rec.get("answers", []) for a in order]
    counts = Counter(flat)
    total = max(1, len(flat))
    return [counts.get(a, 0) / total for a in range(n_options)], "samples", len(flat), counts.get(-1, 0)


def job_rows(run_dir: Path, results: dict, cache_root: Path | None) -> tuple[list[dict], dict]:
    """One row per training item (see :data:`COLUMNS`) and the provenance written to export.json."""
    from kaft import losses  # lazy: kaft.losses imports torch, which an export needs only here

    if results.get("status") != "done":
        raise ExportError(
            f"{run_dir}: the job did not finish (status {results.get('status')!r}; see error.txt); "
            f"re-run it before exporting"
        )
    config = results["config"]
    cfg = OmegaConf.create({k: v for k, v in config.items() if k != "method"})
    root = Path(cache_root or config["cache_dir"]).expanduser()
    keys = results.get("cache_keys") or {}
    k = int(config["partition"]["k"])
    det_dir = _artifact(root, "detect", keys.get("detect"), run_dir)
    part_key = partition_key(keys.get("detect"), k, config["seed"])
    part = json.loads((_artifact(root, "partition", part_key, run_dir) / "partition.json").read_text())
    records = detect_mod.read_records(det_dir / "scores.jsonl")
    items = _train_items(cfg, records, results, run_dir)
    scores = [float(r["score"]) for r in records]
    rewards = losses.sample_weights(config["loss"], part["subsets"], scores, k)
    kaft_rewards = list((config.get("partition") or {}).get("rewards") or [])
    rows, diagnosed = [], diagnosis_columns.by_id(results)
    for it, rec, sub, rew in zip(items, records, part["subsets"], rewards):
        row = _row(it, rec, sub, part["names"], rew, kaft_rewards, config)
        rows.append({**row, **diagnosis_columns.values(diagnosed.get(it.id))})
    info = {
        "run_dir": str(run_dir),
        "job": (results.get("job") or {}).get("name"),
        "overrides": results.get("overrides"),
        "cache_dir": str(root),
        "cache_keys": {"detect": keys.get("detect"), "partition": part_key, "model": keys.get("model")},
        "model": config.get("model", {}).get("path") or config.get("model", {}).get("name"),
        "detection": config.get("detection", {}).get("name"),
        "loss": config.get("loss", {}).get("name"),
        "n_items": len(rows),
        "subsets": {n: sum(r["subset_name"] == n for r in rows) for n in part["names"]},
        "columns": COLUMNS,
    }
    return rows, info


def _row(it, rec: dict, sub: int, names: Sequence[str], reward: float, kaft_rewards: list, config: dict) -> dict:
    ds = config.get("dataset") or {}
    instruction = ds.get("instruction")
    dist, source, n_samples, n_unparsed = _distribution(rec, len(it.options))
    pred = (
        int(rec["pred"]) if "pred" in rec else (max(range(len(dist)), key=lambda a: (dist[a], -a)) if any(dist) else -1)
    )
    return {
        "id": it.id,
        "question": it.question,
        "options": list(it.options),
        "answer": it.answer,
        "answer_letter": LETTERS[it.answer],
        "subject": it.subject,
        "domain": it.domain,
        "prompt": format_question(
            it.question,
            it.options,
            it.domain or ds.get("domain") or "general",
            DEFAULT_INSTRUCTION if instruction is None else instruction,
        ),
        "completion": answer_text(it.answer),
        "score": float(rec["score"]),
        "subset": int(sub),
        "subset_name": names[sub],
        "reward": float(reward),
        "kaft_reward": float(kaft_rewards[sub]) if len(kaft_rewards) == len(names) else None,
        "majority_answer": pred,
        "majority_letter": LETTERS[pred] if pred >= 0 else None,
        "answer_dist": dist,
        "dist_source": source,
        "n_samples": n_samples,
        "n_unparsed": n_unparsed,
    }


# ----------------------------------------------------------------------------------------------- writing
def _schema():
    import pyarrow as pa  # lazy: pyarrow is slow to import; needed only for parquet files

    s, i, f = pa.string(), pa.int64(), pa.float64()
    types = {
        "id": s,
        "question": s,
        "options": pa.list_(s),
        "answer": i,
        "answer_letter": s,
        "subject": s,
        "domain": s,
        "prompt": s,
        "completion": s,
        "score": f,
        "subset": i,
        "subset_name": s,
        "reward": f,
        "kaft_reward": f,
        "majority_answer": i,
        "majority_letter": s,
        "answer_dist": pa.list_(f),
        "dist_source": s,
        "n_samples": i,
        "n_unparsed": i,
        **{
            c: {"float": f, "int": i, "bool": pa.bool_(), "str": s}[t]
            for c, (_, t, _) in diagnosis_columns.EXPORT_COLUMNS.items()
        },
    }
    return pa.schema([(name, types[name]) for name in COLUMNS])


EXPORT_KIND = "kaft-export"  #: the manifest's ``kind``: what marks a folder as an export kaft wrote
MANIFEST = "export.json"


def _files(folder: Path) -> list[str]:
    """Every entry under ``folder`` that is not a folder (symbolic links included), as sorted relative paths."""
    out = []
    for top, dirs, names in os.walk(folder):
        links = [d for d in dirs if (Path(top) / d).is_symlink()]
        out += [(Path(top) / n).relative_to(folder).as_posix() for n in [*names, *links]]
    return sorted(out)


def _seal(folder: Path, info: dict) -> None:
    """Write the manifest last: ``info`` plus the kind and the files written (see the module docstring)."""
    atomic_write_json(
        folder / MANIFEST, {"kind": EXPORT_KIND, "files": [f for f in _files(folder) if f != MANIFEST], **info}
    )


def _foreign(folder: Path) -> str | None:
    """Why ``folder`` is not an export kaft wrote (None if it is one, untouched but for its own files)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if (
        not isinstance(manifest, dict)
        or manifest.get("kind") != EXPORT_KIND
        or not isinstance(manifest.get("files"), list)
    ):
        return (
            f'it holds no kaft export manifest ({MANIFEST} with "kind": "{EXPORT_KIND}"; an export from '
            f"before kaft recorded its files has none: delete it yourself if that is what it is)"
        )
    extra = sorted(set(_files(folder)) - {*map(str, manifest["files"]), MANIFEST})
    if extra:
        return f"it holds {len(extra)} file(s) the export did not write (e.g. {extra[0]})"
    return None


def check_out(out: Path, force: bool) -> None:
    """Refuse a target that is not free, an empty folder, or (with ``force``) an export kaft wrote."""
    above = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise ExportError(f"{out}: {above} is a file, not a folder; pass --out a new folder")
    if out.is_symlink():
        raise ExportError(f"{out} is a symbolic link; pass --out a new folder (kaft does not write through links)")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ExportError(f"{out} is a file; pass --out a new folder (kaft never replaces a file it did not write)")
    problem = _foreign(out)
    if problem:
        raise ExportError(
            f"{out} exists and is not an export kaft wrote: {problem}; kaft never deletes what it did "
            f"not write, so --force does not apply: pass --out a new folder"
        )
    if not force:
        raise ExportError(f"{out} exists; pass --force to replace it, or --out another directory")


def write_export(rows: list[dict], info: dict, out: Path) -> None:
    """``train.parquet``, ``train.jsonl``, ``dataset/`` (datasets' save_to_disk) and ``export.json`` into ``out``."""
    # lazy: datasets and pyarrow are slow to import; only writing an export needs them
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema())
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "train.parquet")
    with open(out / "train.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    datasets.Dataset(table).save_to_disk(str(out / "dataset"))
    _seal(out, info)


def export(path: Path, out: Path | None = None, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Export a run dir or a sweep dir (see the module docstring); returns the export directory."""
    path = Path(path).expanduser()
    jobs, sweep = find_jobs(path)
    out = Path(out).expanduser() if out else path / "export"
    check_out(out, force)
    done = [(d, r) for d, r in jobs if r.get("status") == "done"]
    if sweep and not done:
        raise ExportError(f"{path}: no job of the sweep has finished (python -m kaft.sweep.status {path})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ExportError(f"{out}: cannot write there ({e.strerror or e}); pass --out a folder you can write") from None
    try:
        if not sweep:
            rows, info = job_rows(*jobs[0], cache_dir)
            write_export(rows, info, tmp)
            _report(rows, info, out)
        else:
            index = []
            for run_dir, results in done:
                rel = run_dir.relative_to(path).as_posix()
                rows, info = job_rows(run_dir, results, cache_dir)
                write_export(rows, info, tmp / rel)
                _report(rows, info, out / rel)
                index.append({"dir": rel, **{k: info[k] for k in ("job", "cache_keys", "n_items")}})
            skipped = [d.relative_to(path).as_posix() for d, r in jobs if r.get("status") != "done"]
            atomic_write_json(tmp / "index.json", {"sweep_dir": str(path), "exports": index, "skipped": skipped})
            _seal(tmp, {"sweep_dir": str(path)})
            for name in skipped:
                print(f"kaft: skipped {name}: the job did not finish", file=sys.stderr)
        check_out(out, force)  # again: the target may have changed while the export was written
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished export to ``out``; an old export there (``--force``, checked by :func:`check_out`) or an
    empty folder is moved aside first, then deleted."""
    aside = None
    if out.exists():
        aside = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
        out.rename(aside)
    tmp.rename(out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _report(rows: list[dict], info: dict, out: Path) -> None:
    sizes = ", ".join(f"{n} {c}" for n, c in info["subsets"].items())
    print(f"exported {len(rows)} items ({sizes}) of {info['run_dir']} to {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. Bad input ends in one ``kaft: error: ...`` line and exit code 2."""
    ap = argparse.ArgumentParser(
        prog="python -m kaft.export",
        description="Write a finished job's training set "
        "with conflict scores, subsets, rewards and the model's answers (Parquet, JSONL, "
        "a datasets Dataset) for other trainers.",
    )
    ap.add_argument("path", type=Path, help="a run dir (holding results.json) or a sweep dir")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: <path>/export)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="the kaft cache (default: the job's cache_dir)")
    ap.add_argument("--force", action="store_true", help="replace an existing export")
    args = ap.parse_args(argv)
    import datasets  # lazy: slow to import; only the export CLI needs it

    from kaft.run import USER_ERRORS  # lazy: kaft.run loads Hydra and the whole job

    datasets.disable_progress_bars()

    try:
        export(args.path, args.out, args.cache_dir, args.force)
    except (ExportError, *USER_ERRORS) as e:
        print(f"kaft: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
