"""Generative evaluation of free-form benchmarks (``dataset.eval.<name>.format: freeform``) through lm-eval.

A multiple-choice benchmark is scored by log-likelihood (:mod:`kaft.evaluate`); a free-form one has no options to
score, so the model answers: lm-eval runs a ``generate_until`` task (greedy, stopping at
``evaluation.generation.stop``, default a newline, after at most ``evaluation.generation.max_new_tokens`` tokens) on
the in-memory model, and each logged response is judged by the job's verifier (:func:`kaft.verifiers.make_verifier`,
the ``verifier`` config; none = ``exact``). The benchmark's ``acc`` is the fraction of responses the verifier judged
correct; a response with no verdict (an LLM judge's unparseable output) is counted in ``no_verdict`` and left out of
the denominator (``n_judged``), as generative detection discards it. lm-eval's own ``exact_match`` (normalised by
its ignore_case / ignore_punctuation options) is reported beside it, so the two can be compared.

Two kinds of task, as for multiple choice:

* kaft's own: one JSONL of ``{id, prompt, references}`` where ``prompt`` is :func:`kaft.targets.prompt` (the free-form
  block of :func:`kaft.prompts.format_freeform` with the dataset's instruction, as training sees it) or the
  benchmark's own ``prompt`` template, and ``references`` the reference answer and its aliases (lm-eval's multi-target
  exact_match: correct when any matches);
* lm-eval's own generative task where it ships one (``lm_eval: {task: triviaqa, doc: ...}``, :mod:`kaft.eval_tasks`):
  its prompt, stop sequences, filters and metric, its data pointed at a local JSONL; only ``max_gen_toks`` is filled
  from ``evaluation.generation.max_new_tokens`` when the task sets none (lm-eval's default is 256 tokens).

The verifier judges the response lm-eval's metric saw (``filtered_resps`` of the task's first filter: with the
default filters, the generated text without its leading whitespace), against the item's references.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kaft import targets
from kaft.errors import ConfigError
from kaft.eval_tasks import PROMPT, task_override
from kaft.items import FreeFormItem

#: ``evaluation.generation`` defaults: greedy decoding of one line, at most 32 new tokens
GENERATION_DEFAULTS = {"max_new_tokens": 32, "stop": ["\n"]}
METRIC = "generative"  # a benchmark entry's ``metric``: its acc is the verifier's, over generated responses


def generation_settings(gen: Mapping | None) -> dict:
    """``evaluation.generation`` checked and completed with :data:`GENERATION_DEFAULTS` (one ConfigError line)."""
    gen = dict(gen or {})
    unknown = sorted(set(gen) - set(GENERATION_DEFAULTS))
    if unknown:
        raise ConfigError(f"evaluation.generation.{unknown[0]} is not a setting; use {sorted(GENERATION_DEFAULTS)}")
    out = {**GENERATION_DEFAULTS, **{k: v for k, v in gen.items() if v is not None}}
    n = out["max_new_tokens"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"evaluation.generation.max_new_tokens must be an integer >= 1, got {n!r}")
    stop = [out["stop"]] if isinstance(out["stop"], str) else out["stop"]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(
            f"evaluation.generation.stop must be a list of non-empty strings (e.g. ['\\n']), got {out['stop']!r}"
        )
    return {"max_new_tokens": n, "stop": list(stop)}


def freeform_doc(item: FreeFormItem, domain: str, instruction: str | None) -> dict:
    """kaft's own generative task's row: the item's prompt (its benchmark's ``prompt`` template, else the training
    prompt of :func:`kaft.targets.prompt`) and its references."""
    prompt = item.meta.get(PROMPT) or targets.prompt(item, domain, instruction)
    return {"id": str(item.id), "prompt": prompt, "references": list(item.references)}


def task_config(task: str, data_file: str | Path, generation: Mapping) -> dict:
    """The inline lm-eval ``generate_until`` task config for kaft's own free-form rows."""
    path = Path(data_file).resolve()
    return {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(path.parent / "hf_datasets_cache")},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "references",  # a list: lm-eval's multiple targets (correct when any matches)
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": 0,
        "generation_kwargs": {
            "until": list(generation["stop"]),
            "max_gen_toks": int(generation["max_new_tokens"]),
            "do_sample": False,
            "temperature": 0.0,
        },
        # the response follows "Answer:" after a space: strip it, as lm-eval's triviaqa / nq_open do
        "filter_list": [{"name": "none", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": True,
            }
        ],
        "metadata": {"version": 1.0},
    }


def shipped_config(lm_task: str, task: str, data_file: str | Path, generation: Mapping) -> dict:
    """lm-eval's registered generative ``lm_task`` on a local JSONL; ``max_gen_toks`` from the job when unset."""
    cfg = task_override(lm_task, task, data_file)
    kwargs = dict(cfg.get("generation_kwargs") or {})
    kwargs.setdefault("max_gen_toks", int(generation["max_new_tokens"]))
    return {**cfg, "generation_kwargs": kwargs}


def _filter_name(config: Mapping) -> str:
    filters = config.get("filter_list") or []
    return str(filters[0]["name"]) if filters else "none"


def _stderr(p: float, n: int) -> float | None:
    """lm-eval's mean_stderr of 0/1 scores (sample std / sqrt n)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def collect(
    out: Mapping,
    parts: Sequence[tuple[str, list[int]]],
    configs: Mapping[str, Mapping],
    items: Sequence[FreeFormItem],
    verifier: Any,
    per_item: bool,
) -> dict:
    """One free-form benchmark's entry: the verifier's accuracy over its logged responses (all its tasks), lm-eval's
    exact_match beside it, and with ``per_item`` its rows ``{id, response, correct}`` in input order."""
    responses: dict[int, str] = {}
    em_hits, em_n = 0.0, 0
    for task, idx in parts:
        filt = _filter_name(configs[task])
        r = out["results"][task]
        n = int(out.get("n-samples", {}).get(task, {}).get("effective", len(idx)))
        em_hits, em_n = em_hits + float(r[f"exact_match,{filt}"]) * n, em_n + n
        for s in out["samples"][task]:
            if s.get("filter", filt) == filt:
                resp = s["filtered_resps"][0]
                responses[idx[s["doc_id"]]] = resp if isinstance(resp, str) else str(resp)
    order = sorted(responses)
    verdicts = [v[0] for v in verifier.judge([items[i] for i in order], [[responses[i]] for i in order])]
    judged = [v for v in verdicts if v is not None]
    acc = sum(map(bool, judged)) / len(judged) if judged else None
    em = em_hits / em_n if em_n else None
    entry = {
        "acc": acc,
        "acc_stderr": _stderr(acc, len(judged)) if acc is not None else None,
        "n": len(order),
        "n_judged": len(judged),
        "no_verdict": len(verdicts) - len(judged),
        "metric": METRIC,
        "verifier": getattr(verifier, "name", "") or type(verifier).__name__,
        "exact_match": em,
        "exact_match_stderr": _stderr(em, em_n) if em is not None else None,
    }
    if per_item:
        entry["items"] = [{"id": items[i].id, "response": responses[i], "correct": v} for i, v in zip(order, verdicts)]
    return entry


__all__ = ["GENERATION_DEFAULTS", "METRIC", "collect", "freeform_doc", "generation_settings", "shipped_config"]
