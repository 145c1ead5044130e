"""The readout of the released testbed model: head M weakened after pretraining, the letters calibrated.

Pretraining needs head M's strong gain; the saved model answers with a weaker one, as a base LLM uses less of what it
knows before instruction tuning, so fine-tuning has a readout to restore. Both settings are found by bisection on
*format* facts (in no split), so the headroom is the same whatever the seed.
"""

from __future__ import annotations

from collections.abc import Mapping

from kaft.prompts import few_shot_prompt
from kaft.testbed.accuracy import accuracy_by_kind, letter_probs
from kaft.testbed.binding import binding_layout
from kaft.testbed.tokenizer import letter_ids
from kaft.testbed.world import World


def readout_accuracy(model, tok, items, gain: float, b: Mapping) -> float:
    """0-shot accuracy on ``items`` with head M's output gain set to ``gain`` (the model is left at that gain)."""
    set_readout_gain(model, gain, b)
    return accuracy_by_kind(model, tok, items, batch_size=64)["all"]  # the batching the released gain was fit with


def _readout_rows(model, b: Mapping):
    lay = binding_layout(b)
    return model.model.layers[-1].self_attn.o_proj.weight[lay["L_IN"] : lay["L_IN"] + lay["n"], : model.config.head_dim]


def readout_gain(model, b: Mapping) -> float:
    """Head M's current output gain (the weight with which it writes the matched option's letter)."""
    return float(_readout_rows(model, b).detach().diagonal().mean())


def set_readout_gain(model, gain: float, b: Mapping) -> None:
    """Rescale head M's output (the letter it writes) to ``gain``."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    current = readout_gain(model, b)
    with torch.no_grad():
        _readout_rows(model, b).mul_(gain / current)


def release_readout(model, tok, world: World, b: Mapping) -> float:
    """Weaken head M in the model that is saved so that its 0-shot accuracy on well-known *format* facts is
    ``release_accuracy``; returns the gain (``m_gain`` when ``release_accuracy`` is None).

    Pretraining needs the strong gain (at 1.5 the learned layers never come to use the binding). How much of the
    weakened readout fine-tuning restores depends on whether the training answers agree with what the model
    recalls (the knowledge conflict)."""
    target = b.get("release_accuracy")
    if target is None:
        return float(b["m_gain"])
    items = world.format_items(256)
    lo, hi = 0.0, float(b["m_gain"])
    for _ in range(12):
        mid = (lo + hi) / 2
        if readout_accuracy(model, tok, items, mid, b) < float(target):
            lo = mid
        else:
            hi = mid
    set_readout_gain(model, hi, b)
    return hi


def letter_confidence(model, tok, items) -> float:
    """Mean probability of the top option letter (softmax at T = 1 over the option letters) on 0-shot ``items``."""
    prompts = [few_shot_prompt([], it.question, it.options, it.domain or "general") for it in items]
    p = letter_probs(model, tok, prompts, batch_size=64)
    return float((p / p.sum(-1, keepdim=True)).max(-1).values.mean())


def calibrate_letters(model, tok, world: World, b: Mapping) -> float:
    """Scale the option letters' output rows so that the released model is *calibrated* on format facts: its mean
    confidence (top letter probability, T = 1) equals its accuracy, ``release_accuracy``; returns the scale.

    Weakening head M alone leaves a model that is right 75 % of the time but 41 % sure - flatter than pretrained LLMs,
    which are calibrated on multiple choice (GPT-4 technical report, Fig. 8). Sampled at T = 0.7, such a flat model
    puts a contradicted fact only a little below chance (Score 0.19 vs 0.25), so which items probing flags hung on
    sampling noise. Scaling the letters' logits changes no argmax: the release accuracy stays as calibrated."""
    import torch  # lazy: torch takes seconds to import; a cached re-run never needs it

    target = float(b["release_accuracy"])
    items = world.format_items(256)
    letters = letter_ids(tok, int(b["letters"]))
    rows = model.get_output_embeddings().weight
    base = rows.detach()[letters].clone()

    def conf_at(scale: float) -> float:
        with torch.no_grad():
            rows[letters] = base * scale
        return letter_confidence(model, tok, items)

    lo, hi = 1.0, 1.0
    while conf_at(hi) < target and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if conf_at(mid) < target else (lo, mid)
    conf_at(hi)
    return hi
