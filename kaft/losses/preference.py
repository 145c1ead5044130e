"""Preference losses: DPO on (chosen, rejected) answer pairs built from sampled answers (:mod:`kaft.losses.pairs`).

``loss = (1/P) * sum_p R_p * -log sigmoid(dpo_beta * ((log pi_c - log ref_c) - (log pi_r - log ref_r)))`` over the
P pairs of a batch, log-probabilities summed over each answer's tokens, ``R_p`` the KaFT reward of the pair's item
with ``weight_by_subset``, else 1. Why a loss of its own kind (``needs = "pairs"``): it trains on pairs, not on
weighted SFT batches, so the trainer builds pair batches for it and scores them against a reference policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from kaft.data import MCItem
from kaft.items import is_freeform
from kaft.lazy import LazyModule
from kaft.losses.base import IGNORE_INDEX, LOSSES, Loss
from kaft.losses.pairs import PAIR_SOURCES, PairError, build_pairs, has_samples
from kaft.losses.response_pairs import RESPONSE_MODES, records_of, response_pairs
from kaft.losses.settings import LossError, choice, flag, integer, number
from kaft.losses.weighted import KaFT, KaftSettings, kaft_rewards

torch = LazyModule("torch")  # imported when a loss is computed, not when it is checked (kaft/lazy.py)
F = LazyModule("torch.nn.functional")

SMA_SAMPLING = ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): ``(1/P) * sum_p w_p * -log sigmoid(beta * ((pc - rc) - (pr - rr)))``.

    Arguments are the [P] sequence log-probabilities of the chosen / rejected answers under the policy and the
    reference; ``weights`` [P] default to 1.
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    per_pair = -F.logsigmoid(margin)
    if weights is None:
        return per_pair.mean()
    return (weights.to(per_pair) * per_pair).sum() / per_pair.numel()


def chosen_nll(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor, weights: torch.Tensor | None = None):
    """SMA Table 6's "SFT + DPO" term (He et al. 2024; TRL's ``rpo_alpha``): the chosen responses' per-token mean
    NLL ``-log pi(chosen) / |chosen|``, averaged over the P pairs (weighted like the DPO term)."""
    nll = -policy_chosen / chosen_tokens.to(policy_chosen).clamp(min=1)
    return nll.mean() if weights is None else (weights.to(nll) * nll).sum() / nll.numel()


def dpo_pair_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor | None,
    beta: float,
    chosen_tokens: torch.Tensor | None = None,
):
    """``(loss, margin)``: :func:`dpo_loss` and the detached implicit reward margin of each pair (for logging);
    ``chosen_tokens`` is accepted and unused (the signature of :meth:`PreferenceLoss.pair_loss`)."""
    loss = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, weights)
    with torch.no_grad():
        margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return loss, margin


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None, labels_shifted: bool = False
) -> torch.Tensor:
    """``[P]`` sums of ``log p(label)`` over each label row's tokens (``-100`` skipped).

    ``labels`` [P, T] is scored against ``logits[rows[p]]`` (``rows`` default ``arange(P)``; two label rows may
    share one logits row, e.g. the chosen and the rejected answer letter after the same prompt). Same shift
    convention as :func:`kaft.losses.compute_loss`; only the label positions' logits are upcast.
    """
    if rows is None:
        rows = torch.arange(labels.size(0), device=logits.device)
    labels = labels.to(logits.device)
    if not labels_shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    label_idx, pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    picked = logits[rows.to(logits.device)[label_idx], pos].float()
    tok = labels[label_idx, pos]
    logp = -F.cross_entropy(picked, tok, reduction="none")
    return torch.zeros(labels.size(0), dtype=logp.dtype, device=logp.device).index_add(0, label_idx, logp)


@dataclasses.dataclass(frozen=True)
class PairSettings:
    """How a preference loss gets its pairs (:mod:`kaft.losses.pairs`). The SMA sampling settings (§4.1: n = 8,
    T = 1.4 for Qwen2, top-k 50, top-p 0.9) are checked whatever ``pair_source`` is, so a typo is caught either
    way."""

    pairs: str = choice(
        "self_self", RESPONSE_MODES, help="chosen ≻ rejected: self ≻ self | dataset ≻ self | dataset ≻ dataset"
    )
    pair_source: str = choice("sma", PAIR_SOURCES, help="sma: fresh samples | detection: detection's own")
    max_pairs: int = integer(8, 1, "pairs per item")
    num_samples: int = integer(8, 1, "SMA responses per query")
    temperature: float = number(1.4, lo=0.0, lo_open=True, help="SMA sampling temperature")
    top_k: int = integer(50, 0, "top-k of the sampling, 0 = off")
    top_p: float = number(0.9, 0.0, 1.0, lo_open=True, help="SMA nucleus sampling")
    max_new_tokens: int = integer(4, 1, "tokens per sampled response (multiple choice: the letter is parsed)")
    response_tokens: int = integer(32, 1, "tokens per sampled free-form response (its first line is judged)")


class PreferenceLoss(Loss):
    """A loss on preference pairs built from sampled answers; its settings extend :class:`PairSettings`.
    Subclasses give :meth:`pair_loss`."""

    needs = "pairs"
    Settings = PairSettings
    #: its pairs: answer letters of multiple-choice items (:func:`kaft.losses.pairs.build_pairs`), whole responses
    #: of free-form items (:mod:`kaft.losses.response_pairs`; kaft.schema.check_target refuses the other pairings)
    targets = ("letter", "response")

    def batch_loss(self, logits, targets, sample_idx, weights, batch_size):
        raise LossError(
            f"loss {self.name} trains on preference pairs: use kaft.train.train_lora(..., records=...) "
            f"(or kaft.losses.dpo_loss), not compute_loss"
        )

    def needs_detection_samples(self) -> bool:
        return self.s.pairs != "dataset_dataset" and not PAIR_SOURCES.get(self.s.pair_source).own_sampling

    def sampling(self, freeform: bool = False) -> dict | None:
        if self.s.pairs == "dataset_dataset" or not PAIR_SOURCES.get(self.s.pair_source).own_sampling:
            return None
        out = {k: getattr(self.s, k) for k in SMA_SAMPLING}
        return {**out, "max_new_tokens": self.s.response_tokens} if freeform else out

    def make_pairs(
        self,
        items: Sequence[MCItem],
        records: Sequence[Mapping] | None,
        seed: int,
        domain: str,
        instruction: str | None,
    ) -> list[dict]:
        """The preference pairs of ``items`` from their sampled answers ``records`` (same order): free-form items'
        from their judged responses (:mod:`kaft.losses.response_pairs`), multiple-choice items' from their letters
        (:mod:`kaft.losses.pairs`); ``pairs=dataset_dataset`` from the data set alone."""
        s = self.s
        if is_freeform(items) or s.pairs == "dataset_dataset":
            responses, verdicts = records_of(items, records) if s.pairs != "dataset_dataset" else (None, None)
            pairs = response_pairs(items, responses, verdicts, seed, s.max_pairs, s.pairs, domain, instruction)
            if not pairs:
                raise PairError(
                    f"train_lora: loss {self.name} (pairs={s.pairs}): no item has both a chosen and a rejected "
                    f"response, so there is no preference pair to train on"
                    + ("" if s.pairs == "dataset_dataset" else " (raise loss.num_samples or loss.temperature)")
                )
            return pairs
        if not has_samples(records):
            raise PairError(
                f"train_lora: loss {self.name} builds its pairs from the detection's sampled answers, "
                f"but {'no records were passed' if records is None else 'no record has any'}; pass "
                f"records= (kaft.detection.sample_responses, or a detection that saves samples: "
                f"estimator=sample or icl)"
            )
        pairs = build_pairs(
            items, records, s.pairs, s.max_pairs, seed, domain=domain, instruction=instruction, source=s.pair_source
        )
        if not pairs:
            raise PairError(
                f"train_lora: loss {self.name} (pairs={s.pairs}, pair_source={s.pair_source}): no item "
                f"has both a chosen and a wrong sampled answer, so there is no preference pair to train on"
            )
        return pairs

    def pair_loss(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        weights: torch.Tensor,
        chosen_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, margin)`` of a batch of P pairs from their [P] sequence log-probabilities under the policy and
        the reference (``chosen_tokens`` [P]: the chosen responses' label token counts), and the detached [P]
        implicit reward margins that training logs."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DpoSettings(PairSettings, KaftSettings):
    """DPO's strength ``dpo_beta`` (SMA App. B: 0.1; the global ``beta`` is KaFT's might-wrong reward), and KaFT's
    rewards, which weigh each pair with ``weight_by_subset``."""

    dpo_beta: float = number(0.1, lo=0.0, lo_open=True, help="DPO's beta (KL strength)")
    weight_by_subset: bool = flag(False, help="weight each pair by its item's KaFT reward")
    sft_weight: float = number(0.0, lo=0.0, help="SMA Table 6's SFT + DPO: weight of the chosen responses' CE")


@LOSSES.register("dpo")
class DPO(PreferenceLoss):
    """DPO on (reference or correct self-answer, the model's own wrong answer) pairs: SMA's n = 8 fresh samples per
    query, correct × incorrect, down-sampled to ``max_pairs`` (``pair_source=sma``), or the detection's samples, one
    pair per distinct wrong option (``detection``); the reference policy is the base model (the LoRA adapter
    disabled). With ``weight_by_subset`` each pair is weighted by its item's KaFT reward."""

    label = "DPO"
    Settings = DpoSettings
    new_defaults = {"sft_weight": 0.0, "response_tokens": 32}  # plain DPO; free-form sampling only

    def check(self, k: int) -> None:
        if self.s.weight_by_subset:
            kaft_rewards(self.name, self.s, k)

    def weights(self, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        if self.s.weight_by_subset:
            return KaFT.weights(self, subsets, scores, k)
        return [1.0] * len(subsets)

    def pair_loss(self, policy_chosen, policy_rejected, ref_chosen, ref_rejected, weights, chosen_tokens=None):
        loss, margin = dpo_pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, weights, self.s.dpo_beta)
        if self.s.sft_weight > 0:
            if chosen_tokens is None:
                raise LossError(f"loss {self.name}: sft_weight > 0 needs the chosen responses' token counts")
            loss = loss + self.s.sft_weight * chosen_nll(policy_chosen, chosen_tokens, weights)
        return loss, margin
