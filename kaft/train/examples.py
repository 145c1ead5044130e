"""Training examples and batches: the tokenisation of prompt + target, and the collators of both kinds of batch.

Each item becomes one example: its prompt and its target text as :mod:`kaft.targets` builds them for
``train.target`` — the option letter (``" A"``, KaFT's setting), the letter and the option text, or a response
(a free-form item's reference response, a multiple-choice item's response / explanation field) — with the loss on
every target token and on no prompt token. With ``train.response_eos`` a response target ends with the tokenizer's
EOS token (as TRL's SFT trainer ends a completion), so a model trained on responses learns where one stops
(generation stops at EOS as well as at ``evaluation.generation.stop``); it is off by default because a model that
never learned to predict EOS (the testbed's: its pretraining puts no loss on it) starts with a huge CE on it that
dominates the loss. A letter or option target never has one (what kaft always trained on). :func:`encode_example` is that tokenisation, public so that scoring code
can use the very same token split. Preference pairs are encoded the same
way; when chosen and rejected differ only in their last token — one-letter answers after the same prompt — both
are read from one sequence's logits (the causal logits that score the last token do not see it), so such a pair
costs one sequence, not two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from kaft import targets
from kaft.losses import IGNORE_INDEX
from kaft.train.config import TrainError


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts *before* the text by default (``[bos]`` for Llama-style tokenizers, ``[]`` for
    Qwen/GPT-2 style ones). A trailing EOS some tokenizers append is not part of it."""
    probe = "Answer:"
    plain = _ids(tokenizer, probe, False)
    full = _ids(tokenizer, probe, True)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i]
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None and full[:1] == [bos] else []


def encode_example(
    tokenizer, prompt: str, target: str, max_length: int, eos: bool = False
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for ``prompt + target`` with the loss on the target tokens only (and on the
    tokenizer's EOS after them with ``eos``, where it has one).

    ``input_ids = special_prefix + ids(prompt) + ids(target)``; the target ids are those of ``prompt + target``
    after the prompt's (how lm-eval splits context and continuation), which equals ``ids(target)`` on its own for
    byte-level BPE tokenizers and avoids the spurious leading "▁" of SentencePiece ones. When the joint tokenisation
    does not start with the prompt's ids, ``ids(target)`` is used. Over ``max_length`` the prompt is cut from the
    left (the special prefix and the target are kept); a target that does not fit on its own is a
    :class:`TrainError`, never cut.
    """
    prefix = special_prefix(tokenizer)
    p_ids = _ids(tokenizer, prompt, False)
    joint = _ids(tokenizer, prompt + target, False)
    t_ids = (
        joint[len(p_ids) :]
        if joint[: len(p_ids)] == p_ids and len(joint) > len(p_ids)
        else _ids(tokenizer, target, False)
    )
    if not t_ids:
        raise TrainError(f"target {target!r} tokenizes to nothing")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos and eos_id is not None:
        t_ids = [*t_ids, int(eos_id)]
    room = max_length - len(prefix) - len(t_ids)
    if room < 1:
        raise TrainError(
            f"train.max_length={max_length} leaves no room for the prompt (special prefix "
            f"{len(prefix)} + target {len(t_ids)} tokens); raise train.max_length (a target is never cut)"
        )
    if len(p_ids) > room:
        p_ids = p_ids[len(p_ids) - room :]
    input_ids = prefix + p_ids + t_ids
    labels = [IGNORE_INDEX] * (len(prefix) + len(p_ids)) + t_ids
    return input_ids, labels


def build_examples(
    tokenizer,
    items: Sequence,
    weights: Sequence[float],
    domain: str,
    instruction: str | None,
    max_length: int,
    target: str | None = None,
    response_eos: bool = False,
) -> list[dict]:
    """One tokenised SFT example per item (multiple-choice or free-form), carrying the item's reward as
    ``weights``; ``target`` is ``train.target`` (None = auto: :func:`kaft.targets.resolve`), ``response_eos``
    ``train.response_eos`` (EOS after a response target)."""
    kind = targets.resolve(target, items)
    out = []
    for it, w in zip(items, weights):
        prompt, text = targets.prompt_and_target(it, kind, domain, instruction)
        try:
            ids, labels = encode_example(tokenizer, prompt, text, max_length, eos=response_eos and kind == "response")
        except TrainError as e:
            raise TrainError(f"item {it.id!r} (train.target={kind}): {e}") from None
        out.append({"input_ids": ids, "labels": labels, "weights": float(w)})
    return out


def mean_label_tokens(rows: Sequence[Mapping], key: str = "labels") -> float:
    """The mean number of label tokens per example (results.json's ``train_target.mean_label_tokens``)."""
    if not rows:
        return 0.0
    return sum(sum(t != IGNORE_INDEX for t in r[key]) for r in rows) / len(rows)


class ListDataset(torch.utils.data.Dataset):
    """The examples as the map-style dataset the Trainer reads."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _pad(seqs: Sequence[Sequence[int]], n: int, fill: int) -> torch.Tensor:
    out = torch.full((len(seqs), n), fill, dtype=torch.long)
    for i, x in enumerate(seqs):
        out[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return out


def _attention_mask(seqs: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, x in enumerate(seqs):
        mask[i, : len(x)] = 1
    return mask


class WeightedCollator:
    """Right-pads ``input_ids`` (with ``pad_id``) and ``labels`` (with -100), builds the attention mask and stacks
    the per-sample ``weights``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs = [r["input_ids"] for r in rows]
        n = max(len(x) for x in seqs)
        weights = torch.tensor([float(r["weights"]) for r in rows], dtype=torch.float32)
        return {
            "input_ids": _pad(seqs, n, self.pad_id),
            "attention_mask": _attention_mask(seqs, n),
            "labels": _pad([r["labels"] for r in rows], n, IGNORE_INDEX),
            "weights": weights,
        }


def build_pair_examples(tokenizer, pairs: Sequence[Mapping], weights: Sequence[float], max_length: int) -> list[dict]:
    """Tokenised preference pairs: ``prompt + chosen`` and ``prompt + rejected`` (:func:`encode_example`),
    weighted by ``weights[pair["index"]]`` (the pair's item reward)."""
    rows = []
    for p in pairs:
        c_ids, c_lab = encode_example(tokenizer, p["prompt"], p["chosen"], max_length)
        r_ids, r_lab = encode_example(tokenizer, p["prompt"], p["rejected"], max_length)
        rows.append(
            {
                "chosen_ids": c_ids,
                "chosen_labels": c_lab,
                "rejected_ids": r_ids,
                "rejected_labels": r_lab,
                "weights": float(weights[p["index"]]),
            }
        )
    return rows


def shares_sequence(r: Mapping) -> bool:
    """Chosen and rejected differ only in the last token (labels before it equal): one sequence scores both."""
    c, rj = r["chosen_ids"], r["rejected_ids"]
    return len(c) == len(rj) and c[:-1] == rj[:-1] and r["chosen_labels"][:-1] == r["rejected_labels"][:-1]


class PairCollator:
    """Packs preference pairs into one right-padded batch of sequences.

    Returns ``input_ids`` / ``attention_mask`` [M, T], ``chosen_labels`` / ``rejected_labels`` [P, T] aligned with
    sequence rows ``chosen_row`` / ``rejected_row`` [P], and ``weights`` [P]. A pair whose answers differ only in the
    last token takes one row (M < 2P) unless ``share=False``. Rows that carry precomputed reference log-probs
    (full fine-tuning, :mod:`kaft.train.full`) add ``ref_chosen`` / ``ref_rejected`` [P].
    """

    def __init__(self, pad_id: int, share: bool = True):
        self.pad_id, self.share = pad_id, share

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs: list[list[int]] = []
        c_row, r_row = [], []
        for r in rows:
            c_row.append(len(seqs))
            seqs.append(r["chosen_ids"])
            if self.share and shares_sequence(r):
                r_row.append(c_row[-1])  # its labels score the chosen row's logits: only the last label differs
            else:
                r_row.append(len(seqs))
                seqs.append(r["rejected_ids"])
        n = max(len(x) for x in seqs)
        return {
            "input_ids": _pad(seqs, n, self.pad_id),
            "attention_mask": _attention_mask(seqs, n),
            "chosen_labels": _pad([r["chosen_labels"] for r in rows], n, IGNORE_INDEX),
            "rejected_labels": _pad([r["rejected_labels"] for r in rows], n, IGNORE_INDEX),
            "chosen_row": torch.tensor(c_row),
            "rejected_row": torch.tensor(r_row),
            "weights": torch.tensor([float(r["weights"]) for r in rows], dtype=torch.float32),
            **_precomputed_reference(rows),
        }


def _precomputed_reference(rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Full fine-tuning's precomputed reference log-probs of the pairs (kaft.train.full), if the rows carry them."""
    if "ref_chosen" not in rows[0]:
        return {}
    return {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float32) for k in ("ref_chosen", "ref_rejected")}
