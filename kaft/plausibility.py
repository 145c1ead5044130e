"""Warnings about data that is legal but probably not what the user meant, printed before any model weights load.

Two mistakes cost a run without failing it: prompts longer than the model's context (positions it never saw; lm-eval
cuts evaluation prompts from the left, transformers only logs a generic line) or than ``train.max_length`` (kaft
cuts the training prompt from the left), and a benchmark that is the training set, or mostly repeats it (its
accuracy then measures recall of trained answers). Each needs the loaded data, and the first the model's tokenizer
and context length — both read without the weights (the tokenizer files and config.json; a source that builds its
model, the testbed's, answers from its config through :data:`kaft.modeling.PREVIEWS`). So :func:`warn` runs after
the data stage and the config checks and before the model is resolved or loaded; each finding is ONE line
``kaft: warning: ...`` on stderr (and in the log) and the job goes on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kaft import targets
from kaft.prompts import DEFAULT_INSTRUCTION, answer_text, format_question

log = logging.getLogger("kaft")

PREFIX = "kaft: warning: "
#: a benchmark sharing more than this share of its items (question + options) with the training set is flagged
OVERLAP_WARN = 0.5
#: config.json fields that give a model's context length, in the order transformers' model families use them
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len", "n_ctx")
#: how many of the longest questions (plus the demonstrations' own items) get their detection prompt built
DETECTION_CANDIDATES = 4


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


# ----------------------------------------------------------------------------------------------- overlap
def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def item_key(it) -> tuple:
    """What makes two items the same question whatever their ids, answers or file: the question and its options
    (as a set: a shuffled copy is the same question), whitespace and case ignored."""
    return _norm(it.question), tuple(sorted(_norm(o) for o in getattr(it, "options", None) or ()))


def overlap_warnings(train: Sequence, evals: Mapping[str, Sequence], fps: Mapping[str, str] | None = None) -> list[str]:
    """One line per benchmark that is the training set (same fingerprint, or the same questions and options) or
    shares more than :data:`OVERLAP_WARN` of its items with it."""
    keys = [item_key(it) for it in train]
    have = set(keys)
    out = []
    for name, items in evals.items():
        if not items:
            continue
        ev = [item_key(it) for it in items]
        where = f"benchmark {name!r} (dataset.eval.{name})"
        if (fps and fps.get(name) is not None and fps.get(name) == fps.get("train")) or sorted(ev) == sorted(keys):
            out.append(
                f"{where} is identical to the training set ({len(items)} items): its accuracy measures "
                f"recall of the trained answers, not generalisation; evaluate on held-out data"
            )
            continue
        shared = sum(k in have for k in ev)
        if shared / len(items) > OVERLAP_WARN:
            out.append(
                f"{where} shares {shared} of its {len(items)} items ({shared / len(items):.0%}) with the "
                f"training set (same question and options): its accuracy is mostly recall of trained answers; "
                f"remove them from one of the two files"
            )
    return out


# ----------------------------------------------------------------------------------------------- prompt lengths
def _counter(tokenizer):
    """Token counts of a batch of texts, with and without the tokenizer's special prefix (``<s>``)."""

    def count(texts: Sequence[str], special: bool) -> list[int]:
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]] if texts else []

    return count


def _prompt(it, dom: str, ins: str) -> str:
    return format_question(it.question, it.options, it.domain or dom, ins)


def _eval_text(it, dom: str, ins: str, raw_ins: str | None) -> str:
    """What evaluation feeds the model for one item: the zero-shot prompt and its answer (a free-form item's
    generative prompt and reference; its own instruction default when the dataset sets none)."""
    from kaft.eval_tasks import PROMPT

    if not hasattr(it, "options"):
        return (it.meta.get(PROMPT) or targets.prompt(it, dom, raw_ins)) + " " + it.answer
    return (it.meta.get(PROMPT) or _prompt(it, dom, ins)) + answer_text(it.answer)


def _detection_longest(cfg: Mapping, train: Sequence, count, train_lens: list[int]) -> tuple[int, str, int] | None:
    """(tokens, item id, shots) of the longest detection prompt: every item is asked behind the same k
    demonstrations (``choose_shots``), so the longest is among the longest questions and the demonstrations' own
    items (whose prompts use the spare candidate); those are built exactly as detection builds them."""
    from kaft import detection as detect_mod

    lay = detect_mod.detector_for(cfg["detection"]).layout()
    seed, dom, ins = int(cfg["seed"]), cfg["dataset"].get("domain", "general"), cfg["dataset"].get("instruction")
    top = sorted(range(len(train)), key=lambda i: -train_lens[i])[:DETECTION_CANDIDATES]
    pick = sorted(set(top) | set(detect_mod.choose_shots(len(train), lay.shots, seed)))
    prompts = [
        detect_mod.build_queries(
            [train[i]], 1, lay.shots, seed, dom, ins, lay.prompt, lay.order_scheme, shot_pool=train, index_offset=i
        )[0].prompt
        for i in pick
    ]
    lens = count(prompts, True)
    best = max(range(len(pick)), key=lambda j: lens[j])
    return lens[best], train[pick[best]].id, lay.shots


def _cut_part(count, prompt: str, cut: int) -> str:
    """Which part of a training prompt the first ``cut`` tokens are (kaft cuts the prompt from the left)."""
    q_at = prompt.find("\nQuestion: ")
    o_at = prompt.find("\nOptions:", max(q_at, 0))
    head, upto_q = count([prompt[:q_at], prompt[:o_at]], False) if q_at > 0 and o_at > 0 else (0, 0)
    if not head:
        return f"its first {cut:,} tokens"
    if cut < head:
        return f"the first {cut:,} of the instruction line's {head:,} tokens"
    if cut == head:
        return "the instruction line"
    if cut < upto_q:
        return f"the instruction line and the first {cut - head:,} tokens of the question"
    return f"the instruction line, the whole question and {cut - upto_q:,} tokens of the options"


def prompt_lengths(cfg: Mapping, train: Sequence, evals: Mapping[str, Sequence], tokenizer) -> dict[str, dict]:
    """The longest prompt each stage builds, in the model's tokens: ``detection`` (k-shot), ``train`` (prompt +
    answer, special prefix included, with ``n_over`` the examples over ``train.max_length``) and ``evaluation``
    (zero-shot prompt + answer; a benchmark's own ``prompt`` where it has one). Free-form training items (multiple
    choice only after detection) have no detection prompt yet; their training prompt is left out too when training
    takes MC conversion's items (``train.target=letter|option``)."""
    from kaft.train.examples import special_prefix
    from kaft.trainset import target_kind

    count = _counter(tokenizer)
    dom = cfg["dataset"].get("domain", "general")
    ins = cfg["dataset"].get("instruction") or DEFAULT_INSTRUCTION
    out: dict[str, dict] = {}
    kind = target_kind(cfg, train) if train else None
    if kind is not None:
        pairs = [targets.prompt_and_target(it, kind, dom, cfg["dataset"].get("instruction")) for it in train]
        prompts = [p for p, _ in pairs]
        special = len(special_prefix(tokenizer))
        lens = [n + special for n in count([p + t for p, t in pairs], False)]
        i = max(range(len(train)), key=lambda j: lens[j])
        limit = int(cfg["train"]["max_length"])
        out["train"] = {
            "tokens": lens[i],
            "id": train[i].id,
            "n_over": sum(n > limit for n in lens),
            "n": len(train),
            "cut": _cut_part(count, prompts[i], lens[i] - limit) if lens[i] > limit else None,
        }
        if all(hasattr(it, "options") for it in train) and int(cfg["detection"].get("shots", 0)) + 1 <= len(train):
            tokens, item_id, shots = _detection_longest(cfg, train, count, lens)
            out["detection"] = {"tokens": tokens, "id": item_id, "shots": shots}
    limit = (cfg.get("evaluation") or {}).get("limit")
    best = None
    for name, items in evals.items():
        items = list(items)[: int(limit)] if limit else list(items)
        texts = [_eval_text(it, dom, ins, cfg["dataset"].get("instruction")) for it in items]
        for it, n in zip(items, count(texts, True)):
            if best is None or n > best["tokens"]:
                best = {"tokens": n, "id": it.id, "benchmark": name}
    if best is not None:
        out["evaluation"] = best
    return out


def length_warnings(
    cfg: Mapping, lengths: Mapping[str, dict], context_len: int | None, context_how: str = "config.json"
) -> list[str]:
    """At most two lines: the prompts over the model's context (one line for all stages), and the training
    examples over ``train.max_length`` (when that is the tighter limit: kaft cuts them, says which part)."""
    max_len = int(cfg["train"]["max_length"])
    det, tr, ev = lengths.get("detection"), lengths.get("train"), lengths.get("evaluation")
    out, over, fixes = [], [], ["shorten the questions"]
    if context_len:
        if det and det["tokens"] > context_len:
            over.append(f"detection's {det['shots']}-shot prompt up to {det['tokens']:,} tokens (item {det['id']!r})")
            fixes.append("lower detection.shots")
        if tr and tr["tokens"] > context_len and max_len > context_len:
            over.append(
                f"training prompt + answer up to {tr['tokens']:,} (item {tr['id']!r}; train.max_length="
                f"{max_len} cuts none of it)"
            )
            fixes.append(f"set train.max_length={context_len}")
        if ev and ev["tokens"] > context_len:
            over.append(
                f"evaluation prompt + answer up to {ev['tokens']:,} (benchmark {ev['benchmark']!r}, item "
                f"{ev['id']!r}; lm-eval cuts it from the left)"
            )
    if over:
        out.append(
            f"prompts longer than the model's context of {context_len:,} tokens ({context_how}): "
            f"{'; '.join(over)}; the model was never trained on positions past {context_len:,}: "
            f"{', '.join(fixes)} or use a model with a longer context"
        )
    if tr and tr["tokens"] > max_len and not (context_len and max_len > context_len):
        ctx = f" (the model's context is {context_len:,} tokens)" if context_len else ""
        out.append(
            f"{tr['n_over']} of {tr['n']} training examples are longer than train.max_length={max_len} "
            f"tokens (the longest, item {tr['id']!r}, has {tr['tokens']:,}): kaft cuts their prompts from the "
            f"left (the longest loses {tr['cut']}); raise train.max_length{ctx}"
        )
    return out


def data_warnings(
    cfg: Any,
    train: Sequence,
    evals: Mapping[str, Sequence],
    fps: Mapping[str, str] | None = None,
    tokenizer=None,
    context_len: int | None = None,
    context_how: str = "config.json",
) -> list[str]:
    """Every warning about this data with this model (without ``tokenizer``: the overlap checks only), as lines
    without the ``kaft: warning:`` prefix."""
    cfg = _plain(cfg)
    out = []
    if tokenizer is not None:
        out += length_warnings(cfg, prompt_lengths(cfg, train, evals, tokenizer), context_len, context_how)
    return out + overlap_warnings(train, evals, fps)


# ----------------------------------------------------------------------------------------------- the model's side
def _quiet(tokenizer):
    """This private copy counts prompts of any length without transformers' "longer than the maximum" log line
    (the job's own tokenizer still says it where it applies)."""
    tokenizer.model_max_length = int(1e30)
    return tokenizer


def _from_dir(mcfg: Mapping, path: str) -> tuple[Any, int | None, str]:
    from transformers import AutoConfig, AutoTokenizer

    from kaft import modeling

    rev, trust = mcfg.get("revision"), modeling.trust_remote_code(mcfg)
    try:
        conf = AutoConfig.from_pretrained(path, revision=rev, trust_remote_code=trust)
        tok = AutoTokenizer.from_pretrained(path, revision=rev, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001 - a model that does not load is the model stage's one-line error
        return None, None, f"{path}: not readable here ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    for name in CONTEXT_FIELDS:
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return _quiet(tok), value, f"{name} in {path}'s config.json"
    return _quiet(tok), None, f"{path}'s config.json names no context length"


def model_context(cfg: Any) -> tuple[Any, int | None, str]:
    """``(tokenizer or None, context length or None, where it comes from / why not)`` of the job's model, from
    its tokenizer files and config.json or, for a source that builds its model, its preview: no weights are read
    and nothing is built. A model that cannot be resolved gives ``None``: the model stage reports it next."""
    from kaft import modeling
    from kaft.errors import KaftError

    mcfg, config = _plain(cfg["model"]), _plain(cfg)
    try:
        path, _ = modeling.resolve(mcfg, str(config.get("cache_dir")), config, build=False)
        if path:
            return _from_dir(mcfg, path)
        src = mcfg["source"]
        if src not in modeling.PREVIEWS:
            return None, None, f"model source {src!r} builds its model and has no preview"
        tok, n = modeling.PREVIEWS.get(src)(mcfg, config)
        return _quiet(tok), n, f"model source {src!r}"
    except KaftError as e:
        return None, None, str(e)


def emit(lines: Sequence[str]) -> None:
    """Each warning as one ``kaft: warning: ...`` line on stderr, and in the job's log."""
    for line in lines:
        log.warning("%s", line)
        print(PREFIX + line, file=sys.stderr, flush=True)


def warn(cfg: Any, train: Sequence, evals: Mapping[str, Sequence], fps: Mapping[str, str] | None = None) -> list[str]:
    """The job's call (after the data stage, before the model): measure, print the warnings, return them."""
    tok, ctx, how = model_context(cfg)
    if tok is None:
        log.info("prompt lengths not checked: %s", how)
    lines = data_warnings(cfg, train, evals, fps, tok, ctx, how)
    emit(lines)
    return lines
