"""Row adapters: functions that reshape a benchmark's raw rows into kaft's question / options / answer rows.

A data spec names them (``adapter: name | [names]``, :func:`kaft.data.read_spec_rows` applies them in order); each is
registered in :data:`ADAPTERS` under its name, so a plugin can add one for its own benchmark format. This module holds
the registry, the spec naming used in every data error, and the adapters that need nothing of :mod:`kaft.data` (it
imports no other data module, so :mod:`kaft.data` can import it); ``option_lines`` lives in :mod:`kaft.data` beside
the field mapping it reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping

from kaft.datafiles import DataError
from kaft.registry import Registry

ADAPTERS: Registry[Callable[[Iterable[Mapping], Mapping], Iterator[Mapping]]] = Registry("adapter", error=DataError)


def describe(spec: Mapping) -> str:
    """A short human name for a data spec, used in error messages."""
    src = spec.get("source", "local")
    if src == "local":
        return str(spec.get("path"))
    if src == "hub":
        return f"hub:{spec.get('path')}[{spec.get('split', 'train')}]"
    return f"{src}:{spec.get('split')}"


HALUEVAL_TASKS = {  # task: (right column, hallucinated column, [(label, context column)], what is judged)
    "qa": ("right_answer", "hallucinated_answer", [("Knowledge", "knowledge"), ("Question", "question")], "Answer"),
    "dialogue": (
        "right_response",
        "hallucinated_response",
        [("Knowledge", "knowledge"), ("Dialogue History", "dialogue_history")],
        "Response",
    ),
    "summarization": ("right_summary", "hallucinated_summary", [("Document", "document")], "Summary"),
}


@ADAPTERS.register("halueval")
def adapt_halueval(rows: Iterable[Mapping], spec: Mapping) -> Iterator[Mapping]:
    """HaluEval (qa / dialogue / summarization rows, each with a right and a hallucinated output) as a 2-option
    question, as in KaFT App. A.1: per row one of the two outputs is drawn (seeded by ``halueval_seed`` and the
    row number, so the set is the same in every run); options ["Yes", "No"] (does it contain hallucinated
    content?), gold "Yes" (index 0) for the hallucinated output. The task is read off the row's columns."""
    seed = int(spec.get("halueval_seed", 0))
    for n, row in enumerate(rows):
        task = next((t for t, (right, *_) in HALUEVAL_TASKS.items() if right in row), None)
        if task is None:
            raise DataError(
                f"{describe(spec)}: row {n + 1}: not a HaluEval qa/dialogue/summarization row "
                f"(no right_answer / right_response / right_summary column)"
            )
        right, halluc, context, what = HALUEVAL_TASKS[task]
        pick_halluc = int(hashlib.sha256(f"{seed}:{n}".encode()).hexdigest(), 16) % 2 == 1
        output = row.get(halluc if pick_halluc else right)
        parts = [f"#{label}#: {row.get(c)}" for label, c in context]
        parts.append(f"#{what}#: {output}")
        parts.append(f"Does the {what.lower()} contain non-factual or hallucinated information?")
        yield {
            "id": f"{task}-{n}",
            "question": "\n".join(parts),
            "options": ["Yes", "No"],
            "answer": 0 if pick_halluc else 1,
            "subject": f"halueval_{task}",
        }
