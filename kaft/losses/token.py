"""Token-weighted SFT: ``loss = sum_t g_t * R_{i(t)} * CE_t / N`` over the N label tokens of the batch.

The token weight ``g_t`` is computed without gradient from the model's own confidence (LLaMA-Factory's
``use_eaft_loss``, TRL's ``loss_type="dft"``); ``R = 1`` for ``eaft`` and ``dft``, the KaFT reward for
``kaft_eaft``. Why detached: the weight says how much a token counts, it is not itself a thing to optimise (a
gradient through it would push the model towards confident or unconfident predictions for their own sake).

EAFT token weight ``g = f(H~)`` with ``H~ = H_topk / norm`` (entropy of the softmax renormalised over the top-k
logits). ``normalize`` (:data:`EAFT_NORMALIZERS`): ``const3`` divides by 3.0 (~ ln 20, the EAFT paper and
LLaMA-Factory, fixed also when k != 20), ``lnk`` by ln k (H~ in [0, 1]), ``none`` not at all (axolotl).
``variant`` (:data:`EAFT_VARIANTS`): ``power``: ``H~ ** eaft_alpha``; ``sigmoid``: ``sigmoid(30 * (H~ - 0.17))``
(the EAFT paper's gate; the threshold is on the chosen scale, i.e. meant for ``const3``); ``masked``: masked SFT,
weight 0 for tokens whose H~ lies strictly below the batch's ``mask_quantile`` quantile of label-token H~ (linear
interpolation), 1 otherwise (scale-free). ``eaft_alpha`` (EAFT §3: 1, §5.1: 2, 3) only acts in ``power``.
Dropped tokens (``masked``) still count in N, so a variant only changes ``g``. Under gradient accumulation the
``masked`` quantile is per micro-batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from kaft.lazy import LazyModule
from kaft.losses.base import LOSSES, Loss
from kaft.losses.settings import LossError, choice, integer, number
from kaft.losses.weighted import KaFT, KaftSettings
from kaft.registry import Registry

torch = LazyModule("torch")  # imported when a loss is computed, not when it is checked (kaft/lazy.py)
F = LazyModule("torch.nn.functional")

EAFT_ENTROPY_NORM = 3.0  # ~ ln(20); the EAFT paper (Eq. 3) and LLaMA-Factory, fixed whatever k
EAFT_SIGMOID_SCALE, EAFT_SIGMOID_CENTER = 30.0, 0.17  # the EAFT paper's sigmoid gate

#: ``normalize`` -> the divisor of the top-k entropy, given k
EAFT_NORMALIZERS: Registry[Callable[[int], float]] = Registry("EAFT normalize")
EAFT_NORMALIZERS.register("const3", lambda k: EAFT_ENTROPY_NORM)  # LLaMA-Factory / EAFT paper
EAFT_NORMALIZERS.register("lnk", lambda k: math.log(k))  # the maximum top-k entropy: H~ in [0, 1]
EAFT_NORMALIZERS.register("none", lambda k: 1.0)  # axolotl

#: ``variant`` -> gate(H~ [...], alpha, mask_quantile) -> token weights of the same shape
EAFT_VARIANTS: Registry[Callable[[torch.Tensor, float, float], torch.Tensor]] = Registry("EAFT variant")
EAFT_VARIANTS.register("power", lambda h, alpha, q: torch.pow(h, alpha))
EAFT_VARIANTS.register("sigmoid", lambda h, alpha, q: torch.sigmoid(EAFT_SIGMOID_SCALE * (h - EAFT_SIGMOID_CENTER)))
# the quantile is taken over all rows of the batch
EAFT_VARIANTS.register("masked", lambda h, alpha, q: (h >= torch.quantile(h.reshape(-1), q)).to(h.dtype))


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the softmax renormalised over the top-``k`` logits of each row (last dim), no gradient."""
    with torch.no_grad():
        top, _ = torch.topk(logits.detach().float(), k=k, dim=-1)
        logp = top - torch.logsumexp(top, dim=-1, keepdim=True)
        return -(logp.exp() * logp).sum(dim=-1)


def eaft_token_weights(
    logits: torch.Tensor,
    alpha: float = 1.0,
    k: int = 20,
    normalize: str = "const3",
    variant: str = "power",
    mask_quantile: float = 0.15,
) -> torch.Tensor:
    """EAFT's token weights per row of ``logits`` [..., V], detached (the defaults are LLaMA-Factory's
    ``(H_topk / 3.0) ** alpha``)."""
    if logits.size(-1) < k:
        raise LossError(f"loss eaft: top_k={k} exceeds the vocabulary size {logits.size(-1)}; lower loss.top_k")
    h = topk_entropy(logits, k) / EAFT_NORMALIZERS.get(normalize)(k)
    return EAFT_VARIANTS.get(variant)(h, alpha, mask_quantile)


def dft_token_weights(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DFT's token weight: the model's probability of the target token, ``p(y_t)``, detached."""
    with torch.no_grad():
        return torch.exp(-F.cross_entropy(logits.detach().float(), targets, reduction="none"))


class TokenWeighted(Loss):
    """``loss = sum_t g_t * R_{i(t)} * CE_t / N``: subclasses give the detached token weights ``g``."""

    def token_weights(self, logits: torch.Tensor, targets: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        sample_idx: torch.Tensor,
        weights: torch.Tensor,
        batch_size: int,
    ) -> torch.Tensor:
        ce = F.cross_entropy(logits, targets, reduction="none")
        with torch.no_grad():
            gate = self.token_weights(logits.detach(), targets, ce.detach())
        return (ce * gate * weights[sample_idx]).sum() / ce.numel()


@dataclasses.dataclass(frozen=True)
class EaftSettings:
    """EAFT's options (``eaft_alpha``: the entropy exponent, default 1.0 as in EAFT §3)."""

    eaft_alpha: float = number(1.0, lo=0.0, help="entropy exponent of variant=power")
    top_k: int = integer(20, 2, "top-k tokens for the entropy")
    normalize: str = choice("const3", EAFT_NORMALIZERS, help="divisor of the top-k entropy")
    variant: str = choice("power", EAFT_VARIANTS, help="token weight f(H~)")
    mask_quantile: float = number(0.15, 0.0, 1.0, hi_open=True, help="variant=masked: entropy quantile dropped")


def _eaft_weights(s: EaftSettings, logits: torch.Tensor) -> torch.Tensor:
    return eaft_token_weights(logits, s.eaft_alpha, s.top_k, s.normalize, s.variant, s.mask_quantile)


@LOSSES.register("eaft")
class EAFT(TokenWeighted):
    """Entropy-adaptive fine-tuning (EAFT paper Eq. 2-3, LLaMA-Factory ``use_eaft_loss``)."""

    label = "EAFT"
    reads = ("eaft_alpha",)
    Settings = EaftSettings
    renamed = {"alpha": "eaft_alpha", "k": "top_k"}

    def token_weights(self, logits, targets, ce):
        return _eaft_weights(self.s, logits)


@LOSSES.register("dft")
class DFT(TokenWeighted):
    """Dynamic fine-tuning (Wu et al. 2025; TRL ``loss_type="dft"``): token weight ``p(y_t)``, detached."""

    label = "DFT"

    def token_weights(self, logits, targets, ce):
        return torch.exp(-ce)


@dataclasses.dataclass(frozen=True)
class KaftEaftSettings(EaftSettings, KaftSettings):
    """KaFT's reward settings, then EAFT's."""


@LOSSES.register("kaft_eaft")
class KaFTEAFT(TokenWeighted):
    """KaFT's sample reward ``R_i`` times EAFT's token weight. ``alpha``/``beta``/``rewards`` are KaFT's; the EAFT
    entropy exponent is ``eaft_alpha``, as in ``eaft``."""

    label = "KaFT × EAFT"
    reads = ("alpha", "beta", "eaft_alpha")
    Settings = KaftEaftSettings
    combines = ("kaft", "eaft")
    renamed = {"k": "top_k"}

    check, weights = KaFT.check, KaFT.weights  # KaFT's rewards (its settings are a superset of KaFT's)

    def token_weights(self, logits, targets, ce):
        return _eaft_weights(self.s, logits)
