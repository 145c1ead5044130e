"""The report's section on the testbed models themselves: per seed, what the released model answers and what it
knows (0-shot accuracy by kind of fact), and how well diversified probing finds the planted contradictions."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from analysis.claims import ms
from analysis.jobs import jobs_frame
from kaft.results import read_results

MAIN_SWEEP = "table6_halueval"  # its jobs carry detection's truth-aware numbers


def testbed_models(seeds: Sequence[int], cache_dir: str) -> list[dict]:
    """For each seed's testbed model that the sweeps built (cached; others are skipped, nothing is built): build
    stats, the released readout and the 0-shot accuracy by kind, released and with the pretraining readout (what
    the model knows), and the training set's count of items by kind."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaft.cache import Cache
    from kaft.testbed.config import resolve_config
    from kaft.testbed.model import build_model, model_key
    from kaft.testbed.report import accuracy_by_kind, readout
    from kaft.testbed.world import build_world

    out = []
    for s in seeds:
        cfg = resolve_config({"seed": s})
        if not Cache(cache_dir).has("testbed_model", model_key(cfg)):
            print(f"[report] no testbed model for seed {s} in {cache_dir}: its section is left out", flush=True)
            continue
        path = build_model(cfg, cache_dir, progress=False)
        stats = json.loads((path / "testbed.json").read_text())["stats"]
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
        world = build_world(cfg)
        ro = readout(world, model, tok, cfg["model"]["binding"])
        acc0 = {name: accuracy_by_kind(model, tok, world.split(name)) for name in world.splits()}
        kinds = dict(Counter(it.meta.get("kind") for it in world.split("train")))
        out.append({"seed": s, "stats": stats, "readout": ro, "acc0": acc0, "n_train_by_kind": kinds})
    return out


def probes(out: Path) -> dict[str, dict]:
    """One results.json per seed of the main sweep that carries detection's truth-aware numbers (one probe per
    seed: every job of a seed shares it)."""
    d = out / MAIN_SWEEP
    jobs = jobs_frame(d) if d.exists() else None
    found: dict[str, dict] = {}
    for job in [] if jobs is None or jobs.empty else jobs[jobs["status"] == "done"].to_dict("records"):
        res = read_results(job["job_dir"]) or {}
        if "mean_by_kind" in (res.get("detection") or {}):
            found.setdefault(str(job["seed"]), res)
    return found


def wrong_subset_share(probes: dict[str, dict], n_contradict: dict[str, int]) -> tuple[list[float], list[float]]:
    """(recall, precision) in % over seeds of the wrong (lowest-Score) subset for the planted contradictions.
    Recall = contradictions in it / all contradictions (results.json's ``contradict_in_lowest_subset``);
    precision = contradictions in it / its size = recall · n_contradict / |wrong|, where n_contradict is
    ``detection.n_by_kind.contradict`` if results.json has it, else counted in the seed's world
    (``n_contradict``); seeds without it have no precision."""
    recall, precision = [], []
    for seed, res in probes.items():
        det = res["detection"]
        if "contradict_in_lowest_subset" not in det:
            continue
        r = det["contradict_in_lowest_subset"]
        recall.append(100 * r)
        n_c = (det.get("n_by_kind") or {}).get("contradict", n_contradict.get(seed))
        sizes = list((res.get("subsets") or {}).values())
        if n_c is not None and sizes and sizes[0]:
            precision.append(100 * r * n_c / sizes[0])
    return recall, precision


def score_by_kind(out: Path, n_contradict: dict[str, int] | None = None) -> list[str]:
    """Mean diversified Score by kind of training item, the AUROC with which a low Score finds the planted
    contradictions, and the wrong subset's recall and precision for them, over seeds (main sweep)."""
    found = probes(out)
    if not found:
        return []
    dets = [res["detection"] for res in found.values()]
    kinds = sorted({k for det in dets for k in det["mean_by_kind"]})
    vals = {k: [100 * det["mean_by_kind"][k] for det in dets if k in det["mean_by_kind"]] for k in kinds}
    au = [100 * det["auroc_contradict"] for det in dets if "auroc_contradict" in det]
    recall, precision = wrong_subset_share(found, n_contradict or {})
    prec = (
        f"precision (contradictions among the wrong subset's items) {ms(precision)} %"
        + (f" on {len(precision)} of {len(recall)} seeds" if len(precision) < len(recall) else "")
        if precision
        else "precision n/a (the number of contradicting items is in neither results.json nor a cached testbed world)"
    )
    return [
        "Diversified probing (the paper's detector, No = Nr = 10) on the training set, mean ± std over seeds: "
        "Score (%) by kind of item "
        + ", ".join(f"{k} {ms(v)}" for k, v in vals.items())
        + f"; AUROC of a low Score for the contradicting items {ms(au)}; the wrong subset's recall (share of all "
        f"contradicting items that it holds) {ms(recall)} %, {prec}.",
        "",
    ]


def testbed_section(models: Sequence[dict], out: Path) -> list[str]:
    if not models:
        return []
    lines = [
        "## The testbed models",
        "",
        "One world and one pretrained model per seed (`kaft/testbed/`). *Released*: the model the pipeline "
        "fine-tunes, whose multiple-choice readout (head M) is weakened after pretraining to answer "
        "well-known format facts at `release_accuracy`; *knows*: the same model with its pretraining "
        "readout — the ceiling fine-tuning can restore. 0-shot accuracy (%) by kind of fact:",
        "",
        "| seed | build s | head M gain | split | kind | released | knows |",
        "|---:|---:|---:|---|---|---:|---:|",
    ]
    for m in models:
        first = True
        for split, by in m["acc0"].items():
            for kind, v in by.items():
                if kind in ("n", "all"):
                    continue
                full = m["readout"]["acc0_full"][split][kind]
                lead = (
                    f"| {m['seed']} | {m['stats'].get('build_seconds', float('nan')):.0f} | "
                    f"{m['readout']['gain']:.2f} |"
                    if first
                    else "| | | |"
                )
                lines.append(f"{lead} {split} | {kind} | {100 * v:.1f} | {100 * full:.1f} |")
                first = False
    bench = ("test_id", "test_ood")  # the splits behind the testbed_id / testbed_ood benchmarks
    rel = [statistics.fmean(100 * m["acc0"][sp]["all"] for sp in bench) for m in models]
    full = [statistics.fmean(100 * m["readout"]["acc0_full"][sp]["all"] for sp in bench) for m in models]
    lines += [
        "",
        f"Average over the two benchmarks: released {ms(rel)}, knows {ms(full)} — the room fine-tuning has to restore.",
        "",
    ]
    return lines + score_by_kind(out, n_contradict(models))


def n_contradict(models: Sequence[dict]) -> dict[str, int]:
    """``{seed: number of contradicting training items}`` from the testbed worlds (for the wrong subset's
    precision; results.json counts only the share of them that the wrong subset holds)."""
    return {str(m["seed"]): m["n_train_by_kind"].get("contradict", 0) for m in models if "n_train_by_kind" in m}
