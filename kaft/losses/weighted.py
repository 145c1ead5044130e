"""Per-sample weighted SFT: ``loss = (1/B) * sum_i R_i * CE_i`` with the reward ``R_i`` fixed before training.

Why a mean over *samples*, each counted in ``B`` whatever its weight: ``alpha = 0.1`` then really scales that
sample's gradient by 0.1 (normalising by ``sum_i R_i`` would undo the down-weighting of a batch made only of "wrong"
items). With all ``R_i = 1`` and one label token per sample this is the plain mean token CE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from kaft.losses.base import LOSSES, Loss
from kaft.losses.settings import LossError, check_number, number, unchecked

KAFT_ALPHA, KAFT_BETA = 0.1, 0.5  # KaFT §3: "Empirically, we set alpha and beta as 0.1 and 0.5"


@dataclasses.dataclass(frozen=True)
class KaftSettings:
    """KaFT's rewards: ``alpha`` for subset 0 ("wrong"), ``beta`` for subset 1 ("might-wrong"), 1 otherwise, or
    one reward per subset in ``rewards`` (checked against K by :func:`kaft_rewards`)."""

    # alpha / beta are checked even when `rewards` overrides them: a bad value is a typo
    alpha: float = number(KAFT_ALPHA, 0.0, 1.0, help="reward of the wrong subset")
    beta: float = number(KAFT_BETA, 0.0, 1.0, help="reward of the might-wrong subset")
    rewards: object = unchecked(None, help="per-subset rewards, subset 0 first (overrides alpha/beta)")


def kaft_rewards(loss: str, s: KaftSettings, k: int) -> list[float]:
    """The reward of each of the ``k`` subsets (subset 0 first) under KaFT settings ``s`` of loss ``loss``."""
    if s.rewards is None:
        if k != 4:
            raise LossError(
                f"loss {loss}: alpha/beta define rewards for K=4 subsets only; with K={k} set "
                f"loss.rewards to a list of {k} numbers (subset 0 = most conflicts first)"
            )
        return [s.alpha, s.beta, 1.0, 1.0]
    rewards = s.rewards
    if isinstance(rewards, (str, bytes)) or not hasattr(rewards, "__len__"):
        raise LossError(f"loss {loss}: 'rewards' must be a list of {k} numbers (one per subset), got {rewards!r}")
    rewards = list(rewards)
    if len(rewards) != k:
        raise LossError(
            f"loss {loss}: 'rewards' has {len(rewards)} entries but the data is split into K={k} "
            f"subsets; give exactly {k} (subset 0 = most conflicts first)"
        )
    return [check_number(loss, f"rewards[{i}]", 1.0 if r is None else r, lo=0.0) for i, r in enumerate(rewards)]


@LOSSES.register("constant")
class Constant(Loss):
    """Vanilla SFT: every sample has reward 1."""

    label = "constant (vanilla SFT)"


@LOSSES.register("kaft")
class KaFT(Loss):
    """KaFT (paper Eq. 2): reward alpha for subset 0 ("wrong"), beta for subset 1 ("might-wrong"), 1 otherwise.
    For K != 4 subsets, or to override alpha/beta, give ``rewards`` (one per subset, subset 0 first)."""

    label = "KaFT"
    reads = ("alpha", "beta")
    Settings = KaftSettings

    def check(self, k: int) -> None:
        kaft_rewards(self.name, self.s, k)

    def weights(self, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        rewards = kaft_rewards(self.name, self.s, k)
        return [rewards[s] for s in subsets]


@LOSSES.register("auto_adapt")
class AutoAdapt(Loss):
    """The paper's "-w. Score" variant: the reward is the item's conflict Score itself."""

    label = "auto-adapt (R = Score)"

    def weights(self, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        out = []
        for i, s in enumerate(scores):
            s = float(s)
            if not 0.0 <= s <= 1.0:  # also rejects NaN
                raise LossError(f"loss {self.name}: conflict score of item {i} is {s!r}, expected a value in [0, 1]")
            out.append(s)
        return out
