"""Stage 5 — evaluation: zero-shot multiple-choice accuracy through lm-evaluation-harness.

The model under test stays in memory (a plain ``transformers`` model or a ``peft``-wrapped one); it is handed to
lm-eval's :class:`~lm_eval.models.huggingface.HFLM` and never reloaded from disk. A benchmark that lm-eval ships
(MedQA, MedMCQA, MMLU and CMMLU subjects) is scored through lm-eval's own registered task — its prompt, target and
metric — reading a local JSONL of its rows (:mod:`kaft.eval_tasks`; MMLU* runs as one task per subject and its
accuracy is over all items). Any other benchmark becomes kaft's own task: one JSONL of precomputed fields and one
inline config, scoring the prompt that probing and training see (:func:`kaft.prompts.format_question`, or the
benchmark's own ``prompt``) followed by :func:`kaft.prompts.answer_text` (``" A"``, ``" B"``, ...). Accuracy is the
share of items whose gold letter has the highest log-likelihood (lm-eval's ``acc``, not length-normalised).
A free-form benchmark (``format: freeform``) is scored by generation and a verifier instead, in the same lm-eval run
(:mod:`kaft.evaluate_generative`); its entry says so (``"metric": "generative"``).

lm-eval 0.4.13 notes (what this module relies on):

* ``simple_evaluate(tasks=[dict, ...])`` accepts inline task configs; a dict needs a ``task`` key.
* A ``TaskManager`` built with ``include_defaults=False`` skips indexing lm-eval's thousands of bundled YAML
  tasks (seconds of start-up) — inline dicts do not need the index.
* ``multiple_choice`` requests are ``(prompt, target_delimiter + choice)``; the default delimiter is ``" "``,
  so choices are the bare letters ``"A"..`` and the delimiter stays ``" "``: the scored text is exactly
  ``prompt + answer_text(i)``.
* HFLM calls ``model.eval()``; this module restores the caller's train/eval mode afterwards, and restores the
  global RNG states that ``simple_evaluate`` reseeds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kaft import evaluate_generative as gen_mod
from kaft.cache import atomic_write_text
from kaft.errors import KaftError
from kaft.eval_tasks import LM_EVAL, PROMPT, task_override
from kaft.items import FreeFormItem, MCItem, is_freeform
from kaft.prompts import DEFAULT_INSTRUCTION, LETTERS, format_question

log = logging.getLogger(__name__)

TASK_PREFIX = "kaft_"
_NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "fsspec", "filelock")


class EvalError(KaftError):
    """Benchmarks that cannot be evaluated; the message names the benchmark and what is wrong."""


# ----------------------------------------------------------------------------------------------- task files
def task_name(name: str, taken: set[str] | None = None) -> str:
    """A valid, unique lm-eval task name for benchmark ``name`` (``"MedQA-test" -> "kaft_MedQA_test"``)."""
    base = TASK_PREFIX + (re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "benchmark")
    out, k = base, 2
    while taken is not None and out in taken:
        out, k = f"{base}_{k}", k + 1
    return out


def _doc(item: MCItem, domain: str, instruction: str) -> dict:
    prompt = item.meta.get(PROMPT) or format_question(item.question, item.options, item.domain or domain, instruction)
    return {
        "id": str(item.id),
        "prompt": prompt,
        "choices": list(LETTERS[: len(item.options)]),
        "answer": int(item.answer),
    }


def write_docs(docs: Sequence[Mapping], work_dir: str | Path, stem: str) -> Path:
    """Write ``docs`` to ``<work_dir>/<stem>-<hash>.jsonl`` (absolute path; lm-eval reads it with the json builder).

    The file name carries a hash of its contents, so a file once written is never rewritten under the same
    name (the ``datasets`` json loader caches what it read from a path).
    """
    lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    digest = hashlib.sha256(lines.encode()).hexdigest()[:12]
    work_dir = Path(work_dir).expanduser().resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{stem}-{digest}.jsonl"
    if not path.exists():
        atomic_write_text(path, lines)
    return path


def write_task_file(
    items: Sequence[MCItem], work_dir: str | Path, name: str, domain: str, instruction: str | None = None
) -> Path:
    """kaft's own task's docs (``id``, ``prompt``, ``choices``, ``answer``) as a JSONL under ``work_dir``."""
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    return write_docs([_doc(it, domain, instruction) for it in items], work_dir, task_name(name))


def plan_tasks(
    sets: Mapping[str, Sequence],
    work_dir: Path,
    domain: str,
    instruction: str | None,
    generation: Mapping | None = None,
) -> tuple[list[dict], dict[str, list[tuple[str, list[int]]]]]:
    """lm-eval configs, and per benchmark its ``(task, item indices)``: kaft's own task for untagged items, one
    override of lm-eval's registered task per task name that tagged items carry (MMLU*: one per subject). A free-form
    benchmark's tasks are ``generate_until`` ones with ``generation`` (:mod:`kaft.evaluate_generative`)."""
    configs, plan, taken = [], {}, set()
    for name, items in sets.items():
        groups: dict[str | None, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it.meta.get(LM_EVAL) or {}).get("task"), []).append(i)
        plan[name] = []
        for lm_task, idx in groups.items():
            task = task_name(name if lm_task is None else f"{name}__{lm_task}", taken)
            taken.add(task)
            part = [items[i] for i in idx]
            configs.append(_config(task, lm_task, part, work_dir, name, domain, instruction, generation))
            plan[name].append((task, idx))
    return configs, plan


def _config(task, lm_task, items, work_dir, name, domain, instruction, generation) -> dict:
    """One task's config, its rows written under ``work_dir``."""
    if lm_task is not None:
        path = write_docs([it.meta[LM_EVAL]["doc"] for it in items], work_dir, task)
        if is_freeform(items):
            return gen_mod.shipped_config(lm_task, task, path, gen_mod.generation_settings(generation))
        return task_override(lm_task, task, path)
    if is_freeform(items):
        path = write_docs([gen_mod.freeform_doc(it, domain, instruction) for it in items], work_dir, task_name(name))
        return gen_mod.task_config(task, path, gen_mod.generation_settings(generation))
    return task_config(task, write_task_file(items, work_dir, name, domain, instruction))


def task_config(task: str, data_file: str | Path) -> dict:
    """The inline lm-eval task config scoring ``prompt + " " + letter`` for every choice of every doc."""
    return {
        "task": task,
        "dataset_path": "json",
        # the datasets json builder's arrow cache goes beside the data file, not into ~/.cache/huggingface
        "dataset_kwargs": {
            "data_files": {"test": str(Path(data_file).resolve())},
            "cache_dir": str(Path(data_file).resolve().parent / "hf_datasets_cache"),
        },
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": " ",  # + bare letter "A" == answer_text(0) == " A"
        "fewshot_delimiter": "\n\n",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


# ----------------------------------------------------------------------------------------------- validation
def _check(benchmarks: Mapping[str, Sequence], limit: int | None) -> dict[str, list]:
    if not isinstance(benchmarks, Mapping) or not benchmarks:
        raise EvalError("no benchmarks to evaluate (expected a mapping name -> items)")
    if limit is not None and int(limit) < 1:
        raise EvalError(f"limit must be a positive number of items, got {limit!r}")
    out: dict[str, list] = {}
    for name, items in benchmarks.items():
        items = list(items or [])
        if not items:
            raise EvalError(f"benchmark {name!r} has no items")
        kind = FreeFormItem if isinstance(items[0], FreeFormItem) else MCItem  # one benchmark, one kind of item
        for k, it in enumerate(items):
            if not isinstance(it, kind):
                a = "an" if kind is MCItem else "a"
                raise EvalError(f"benchmark {name!r}: item {k} is a {type(it).__name__}, not {a} {kind.__name__}")
            if kind is FreeFormItem:
                continue
            if not 2 <= len(it.options) <= len(LETTERS) or not 0 <= int(it.answer) < len(it.options):
                raise EvalError(
                    f"benchmark {name!r}: item {it.id!r} has answer {it.answer} for {len(it.options)} options"
                )
        out[str(name)] = items[: int(limit)] if limit else items
    return out


# ----------------------------------------------------------------------------------------------- quiet run
@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Keep lm-eval / datasets to warnings and no progress bars for the duration; restore afterwards."""
    levels = {n: logging.getLogger(n).level for n in _NOISY_LOGGERS}
    for n in _NOISY_LOGGERS:
        logging.getLogger(n).setLevel(logging.WARNING if progress else logging.ERROR)
    patched = None
    if not progress:  # lm-eval's request-building loop has an unconditional progress bar per task
        try:
            # lazy: lm-eval imports torch and datasets; needed only by an uncached evaluation
            import lm_eval.api.task as lm_task

            patched = lm_task.tqdm
            lm_task.tqdm = functools.partial(patched, disable=True)
        except (ImportError, AttributeError):
            patched = None
    ds_bars = None
    try:
        import datasets  # lazy: slow to import; an uncached evaluation has lm-eval import it anyway

        ds_bars = datasets.utils.logging.is_progress_bar_enabled()
        if not progress:
            datasets.disable_progress_bars()
    except Exception:  # noqa: BLE001 - datasets' logging helpers are optional niceties
        pass
    try:
        yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)
        if patched is not None:
            # lazy: lm-eval imports torch and datasets; needed only by an uncached evaluation
            import lm_eval.api.task as lm_task

            lm_task.tqdm = patched
        if ds_bars:
            import datasets  # lazy: as above

            datasets.enable_progress_bars()


@contextlib.contextmanager
def _keep_rng() -> Iterator[None]:
    """``simple_evaluate`` reseeds python/numpy/torch globally; give the caller its RNG streams back."""
    # lazy: imported with torch, which a cached re-run never needs
    import numpy as np
    import torch

    py, npy, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _make_lm(model, tokenizer, batch_size: int, max_length: int | None, progress: bool):
    # lazy: lm-eval imports torch and datasets; needed only by an uncached evaluation
    from lm_eval.models.huggingface import HFLM

    class _KaftHFLM(HFLM):
        """HFLM without the per-request progress bar unless asked for."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not progress)

    kw: dict[str, Any] = {}
    if max_length:
        kw["max_length"] = int(max_length)
    return _KaftHFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size), **kw)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when it has no stderr
        return None
    return None if math.isnan(x) else x


# ----------------------------------------------------------------------------------------------- evaluate
def evaluate(
    model,
    tokenizer,
    benchmarks: Mapping[str, Sequence],
    work_dir: str | Path,
    domain: str,
    instruction: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    *,
    per_item: bool = False,
    progress: bool = False,
    max_length: int | None = None,
    verifier: Mapping | None = None,
    generation: Mapping | None = None,
) -> dict:
    """Zero-shot accuracy of the in-memory ``model`` on each benchmark, through lm-eval.

    Items of kaft's own task are formatted with their own ``domain`` (else the run's) and ``instruction``
    (``None``: the default instruction), as in probing and training, unless their benchmark gives a ``prompt``;
    items tagged with an lm-eval task get that task's prompt (:mod:`kaft.eval_tasks`). ``limit`` keeps the first
    ``limit`` items of each benchmark. Returns::

        {"benchmarks": {name: {"acc": float, "acc_stderr": float | None, "n": int}}, "average": float}

    where ``average`` is the unweighted mean of the benchmarks' accuracies (the paper's Avg.). With
    ``per_item=True`` each benchmark also gets ``"items"``: ``[{"id", "answer", "pred", "logprobs"}]`` in input
    order. ``model``'s train/eval mode and the global RNG states are restored afterwards.

    A free-form benchmark is scored by greedy generation (``generation``: ``max_new_tokens``, ``stop``) judged by the
    ``verifier`` config (None = exact); its entry adds ``metric: "generative"``, ``verifier``, ``n_judged``,
    ``no_verdict``, ``exact_match`` (lm-eval's) and per item ``{"id", "response", "correct"}``
    (:mod:`kaft.evaluate_generative`). Its ``acc`` is None when no response got a verdict; ``average`` is then over
    the benchmarks that have one.
    """
    # lazy: lm-eval imports torch and datasets; needed only by an uncached evaluation. Imported first, so that
    # without lm-eval no task file is written.
    import lm_eval.tasks  # noqa: F401

    sets = _check(benchmarks, limit)
    if int(batch_size) < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size!r}")
    work_dir = Path(work_dir).expanduser().resolve()

    free = {name for name, items in sets.items() if is_freeform(items)}
    judge = None
    if free:  # before any task file is written or the model runs: a bad verifier config is one line
        from kaft.verifiers import make_verifier  # lazy: only free-form benchmarks are judged

        judge = make_verifier(verifier, lambda: (model, tokenizer))  # an LLM judge's default model: this one
        generation = gen_mod.generation_settings(generation)
    configs, plan = plan_tasks(sets, work_dir, domain, instruction, generation)
    out = _simple_evaluate(
        model, tokenizer, configs, batch_size, max_length, per_item=per_item or bool(free), progress=progress
    )
    res = _collect_all(out, plan, sets, configs, judge, per_item)
    accs = [v["acc"] for v in res.values() if v["acc"] is not None]
    average = sum(accs) / len(accs) if accs else None
    log.info("evaluation: %s | average %s", ", ".join(f"{k} {_fmt(v['acc'])}" for k, v in res.items()), _fmt(average))
    return {"benchmarks": res, "average": average}


def _collect_all(out: dict, plan: Mapping, sets: Mapping, configs: list[dict], judge, per_item: bool) -> dict:
    """Every benchmark's entry: log-likelihood accuracy, or for a free-form one the ``judge``'s verdicts."""
    by_task = {c["task"]: c for c in configs}
    return {
        name: gen_mod.collect(out, parts, by_task, sets[name], judge, per_item)
        if is_freeform(sets[name])
        else _collect(out, parts, sets[name], per_item)
        for name, parts in plan.items()
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _simple_evaluate(
    model, tokenizer, configs: list[dict], batch_size: int, max_length: int | None, *, per_item: bool, progress: bool
) -> dict:
    """lm-eval's raw output for the task ``configs`` (0-shot, fixed seeds, no request cache), quiet unless
    ``progress``, with the model's train/eval mode and the global RNG states given back afterwards."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    was_training = bool(getattr(model, "training", False))
    try:
        with _quiet(progress), _keep_rng():
            lm = _make_lm(model, tokenizer, batch_size, max_length, progress)
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=configs,
                num_fewshot=0,
                task_manager=TaskManager(include_defaults=False),
                batch_size=int(batch_size),
                log_samples=per_item,
                bootstrap_iters=1000,
                cache_requests=False,
                write_out=False,
                random_seed=0,
                numpy_random_seed=1234,
                torch_random_seed=1234,
                fewshot_random_seed=1234,
            )
    finally:
        if was_training:
            model.train()
    if out is None:  # only non-zero ranks of a distributed launch get None
        raise RuntimeError("lm-eval returned no results (not rank 0?)")
    return out


def _collect(out: dict, parts: list[tuple[str, list[int]]], items: list[MCItem], per_item: bool) -> dict:
    """One benchmark's accuracy over all its items, whichever tasks scored them (MMLU*: one per subject)."""
    n_all, hits, rows = 0, 0.0, {}
    for task, idx in parts:
        r = out["results"][task]
        n = int(out.get("n-samples", {}).get(task, {}).get("effective", len(idx)))
        n_all, hits = n_all + n, hits + float(r["acc,none"]) * n
        if per_item:
            rows.update(_items(out["samples"][task], idx, items))
    if len(parts) == 1:  # lm-eval's own numbers, unchanged
        r = out["results"][parts[0][0]]
        acc, stderr = float(r["acc,none"]), _num(r.get("acc_stderr,none"))
    else:
        acc = hits / n_all  # lm-eval's mean_stderr (sample std / sqrt n) of 0/1 scores over all the items
        stderr = math.sqrt(acc * (1 - acc) / (n_all - 1)) if n_all > 1 else None
    entry = {"acc": acc, "acc_stderr": stderr, "n": n_all}
    if per_item:
        entry["items"] = [rows[i] for i in sorted(rows)]
    return entry


def _items(samples: list[dict], idx: list[int], items: list[MCItem]) -> dict[int, dict]:
    """Per-item rows keyed by the item's position in its benchmark (a task's doc k is item ``idx[k]``)."""
    rows = {}
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        it = items[idx[s["doc_id"]]]
        rows[idx[s["doc_id"]]] = {
            "id": it.id,
            "answer": int(it.answer),
            "pred": max(range(len(lls)), key=lls.__getitem__),
            "logprobs": lls,
        }
    return rows


__all__ = [
    "EvalError",
    "TASK_PREFIX",
    "evaluate",
    "plan_tasks",
    "task_config",
    "task_name",
    "write_docs",
    "write_task_file",
]
