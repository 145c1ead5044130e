"""``loss=sft_self``: SFT on the model's own correct answers (SMA Table 5's "SFT / self" row, Table 6's single and
all labels).

SMA §4.3: "Training on self-generated data yields better results for both DPO and SFT"; "For SFT, a single label is
selected per question" (``labels=single``; Table 6's "SFT (all labels)" trains on every correct answer:
``labels=all``). The responses are SMA's own samples (the settings of ``loss=dpo``: n = 8, T = 1.4, top-k 50,
top-p 0.9), judged by the job's verifier and cached like DPO's (``dpo_samples``); each kept answer is one SFT example
weighted by its item's reward (1), with the usual per-sample mean CE. On multiple-choice data a correct self-answer
is the gold letter: SFT on the items the model answered right at least once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from kaft.items import is_freeform
from kaft.losses.base import LOSSES, Loss
from kaft.losses.preference import SMA_SAMPLING
from kaft.losses.response_pairs import SELF_LABELS, records_of, self_answers
from kaft.losses.settings import LossError, choice, integer, number
from kaft.prompts import answer_text
from kaft.targets import prompt as item_prompt


@dataclasses.dataclass(frozen=True)
class SelfSftSettings:
    """SMA's sampling (§4.1) and which correct answers are trained on."""

    labels: str = choice("single", SELF_LABELS, help="single: one correct answer per question | all: every one")
    num_samples: int = integer(8, 1, "SMA responses per query")
    temperature: float = number(1.4, lo=0.0, lo_open=True, help="SMA sampling temperature")
    top_k: int = integer(50, 0, "top-k of the sampling, 0 = off")
    top_p: float = number(0.9, 0.0, 1.0, lo_open=True, help="SMA nucleus sampling")
    max_new_tokens: int = integer(4, 1, "tokens per sampled response (multiple choice: the letter is parsed)")
    response_tokens: int = integer(32, 1, "tokens per sampled free-form response (its first line is judged)")


@LOSSES.register("sft_self")
class SFTSelf(Loss):
    """SFT on the correct responses among the model's own samples (needs ``self_answers``: the trainer builds SFT
    examples from them, :mod:`kaft.train.self_answers`)."""

    label = "SFT (self)"
    reads = ("labels",)
    needs = "self_answers"
    Settings = SelfSftSettings

    def sampling(self, freeform: bool = False) -> dict | None:
        out = {k: getattr(self.s, k) for k in SMA_SAMPLING}
        return {**out, "max_new_tokens": self.s.response_tokens} if freeform else out

    def make_examples(
        self, items: Sequence, records: Sequence[Mapping] | None, seed: int, domain: str, instruction: str | None
    ) -> list[tuple[int, str, str]]:
        """``(item index, prompt, target)`` of every correct self-answer trained on."""
        if not records:
            raise LossError(f"loss {self.name} trains on the model's own samples: pass records= (its samples)")
        if is_freeform(items):
            responses, verdicts = records_of(items, records)
        else:  # letters: a sample is correct when it names the gold option
            responses = [[str(a) for per in r.get("answers") or [] for a in per] for r in records]
            verdicts = [
                [None if a == "-1" else a == str(it.answer) for a in resp] for it, resp in zip(items, responses)
            ]
        picked = self_answers(items, responses, verdicts, seed, self.s.labels)
        if not picked:
            raise LossError(
                f"loss {self.name}: no item has a correct self-sampled answer, so there is nothing to train on "
                f"(raise loss.num_samples)"
            )
        return [
            (i, item_prompt(items[i], domain, instruction), t if is_freeform(items) else answer_text(items[i].answer))
            for i, t in picked
        ]
