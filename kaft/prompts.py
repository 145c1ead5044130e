"""Prompt formats shared by probing, training, evaluation and the testbed's pretraining corpus.

One module owns the text format so that the model is probed, trained and evaluated on exactly the same
layout (KaFT paper, App. A.3). The testbed pretrains on this layout too, which is what lets a tiny model
answer multiple-choice questions at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from kaft.registry import Registry

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

DEFAULT_INSTRUCTION = "For the following {domain} question, select one correct answer from A to {last}."


def letters(n: int) -> str:
    """The first ``n`` option letters (``letters(4) == "ABCD"``)."""
    if not 2 <= n <= len(LETTERS):
        raise ValueError(f"a question needs between 2 and {len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def format_question(
    question: str, options: Sequence[str], domain: str = "general", instruction: str = DEFAULT_INSTRUCTION
) -> str:
    """One question block ending in ``"Answer:"`` (no trailing space: the answer token carries it)."""
    ls = letters(len(options))
    head = instruction.format(domain=domain, last=ls[-1])
    lines = [head, f"Question: {question}", "Options:"]
    lines += [f"{l}. {o}" for l, o in zip(ls, options)]
    lines.append("Answer:")
    return "\n".join(lines)


def answer_text(index: int) -> str:
    """The training/scoring target for the option at ``index``: a space and its letter (``" A"``)."""
    return " " + LETTERS[index]


def option_text(index: int, options: Sequence[str]) -> str:
    """The ``train.target=option`` target: the letter and the option's text (``" B. Belmora"``)."""
    return f"{answer_text(index)}. {options[index]}"


#: the free-form instruction (a free-form prompt has no options to choose from). Its words are the MC
#: instruction's and the testbed templates', so the testbed's word-level tokenizer knows every one of them.
FREEFORM_INSTRUCTION = "For the following {domain} question, answer with one correct answer."


def format_freeform(question: str, domain: str = "general", instruction: str = FREEFORM_INSTRUCTION) -> str:
    """A free-form question block ending in ``"Answer:"`` (the response follows after a space), the layout of
    :func:`format_question` without the options."""
    head = instruction.format(domain=domain, last="")
    return "\n".join([head, f"Question: {question}", "Answer:"])


def freeform_few_shot(
    shots: Sequence[tuple[str, str]],
    question: str,
    domain: str = "general",
    instruction: str = FREEFORM_INSTRUCTION,
) -> str:
    """k solved free-form examples ``(question, response)``, a blank line between each, then the open question
    (KaFT App. A.3's few-shot layout, without options)."""
    parts = [format_freeform(q, domain, instruction) + " " + r for q, r in shots]
    parts.append(format_freeform(question, domain, instruction))
    return "\n\n".join(parts)


def format_example(
    question: str, options: Sequence[str], answer: int, domain: str = "general", instruction: str = DEFAULT_INSTRUCTION
) -> str:
    """A solved example (a few-shot demonstration): the question block followed by its answer."""
    return format_question(question, options, domain, instruction) + answer_text(answer)


def few_shot_prompt(
    shots: Sequence[tuple[str, Sequence[str], int]],
    question: str,
    options: Sequence[str],
    domain: str = "general",
    instruction: str = DEFAULT_INSTRUCTION,
) -> str:
    """k solved examples, a blank line between each, then the open question (paper App. A.3)."""
    parts = [format_example(q, o, a, domain, instruction) for q, o, a in shots]
    parts.append(format_question(question, options, domain, instruction))
    return "\n\n".join(parts)


ICL_HEADER = "The following are multiple choice questions about {domain}. Please choose the correct answer."


def icl_prompt(
    shots: Sequence[tuple[str, Sequence[str], int]],
    question: str,
    options: Sequence[str],
    domain: str = "general",
    header: str = ICL_HEADER,
) -> str:
    """Ren et al. (2024) probing prompt: one header line, then k solved examples and the open question, each
    ``Question: … / A. … / Answer: X`` (the MMLU layout their ICL probing uses)."""

    def block(q: str, opts: Sequence[str]) -> str:
        ls = letters(len(opts))
        return "\n".join([f"Question: {q}", *[f"{l}. {o}" for l, o in zip(ls, opts)], "Answer:"])

    parts = [header.format(domain=domain)]
    parts += [block(q, o) + answer_text(a) for q, o, a in shots]
    parts.append(block(question, options))
    return "\n\n".join(parts)


#: prompt builders by name (``detection.prompt``): the KaFT App. A.3 layout or Ren et al.'s ICL layout
PROMPTS: Registry = Registry("prompt layout")
PROMPTS.register("kaft", few_shot_prompt)
PROMPTS.register("ren", icl_prompt)
