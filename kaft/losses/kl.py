"""SFT with a KL penalty toward the base model (EAFT's baseline SFT_KL, App. E / F).

EAFT App. E: SFT_KL "adds a Kullback-Leibler (KL) divergence penalty to the loss function. It explicitly constrains
the policy from deviating too far from the base model (reference model)"; App. F.2: "The KL-divergence coefficient
β in SFT_KL was set to 0.5". The paper gives no formula; kaft's reading, per label token t of sample i:

    loss = (1/B) * sum_i R_i * mean_{t in labels(i)} [ CE_t + kl_beta * KL(pi_theta(.|x_<t) || pi_ref(.|x_<t)) ]

with the KL exact over the whole vocabulary (not a sampled-token estimate, which verl's k1/k3 penalties use on
RL rollouts: here the label positions are fixed, so the exact value is as cheap as the CE), gradient through
``pi_theta`` only, and ``pi_ref`` the base model with the LoRA adapter disabled — the reference DPO uses in kaft
(:func:`kaft.train.steps.pair_batch_loss`), so no second copy of the model is held. ``R_i`` = 1 (plain SFT) and the
per-sample mean over label tokens are :class:`kaft.losses.base.Loss`'s defaults, so ``kl_beta = 0`` is exactly
``loss=constant``.
"""

from __future__ import annotations

import dataclasses

from kaft.lazy import LazyModule
from kaft.losses.base import LOSSES, Loss
from kaft.losses.settings import LossError, number

torch = LazyModule("torch")  # imported when a loss is computed, not when it is checked (kaft/lazy.py)
F = LazyModule("torch.nn.functional")

SFT_KL_BETA = 0.5  # EAFT App. F.2


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``[N]`` KL(softmax(logits) || softmax(ref_logits)) per row of ``[N, V]`` logits (the reference detached)."""
    logp = F.log_softmax(logits, dim=-1)
    ref_logp = F.log_softmax(ref_logits.detach(), dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def sft_kl_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    targets: torch.Tensor,
    sample_idx: torch.Tensor,
    weights: torch.Tensor,
    batch_size: int,
    kl_beta: float,
) -> torch.Tensor:
    """``(1/B) * sum_i R_i * mean_t (CE_t + kl_beta * KL_t)`` over the N label tokens: ``logits`` / ``ref_logits``
    [N, V] the policy's and the reference's rows at the label positions, ``targets`` [N], ``sample_idx`` [N],
    ``weights`` [B] (the :meth:`Loss.batch_loss` convention)."""
    per_token = F.cross_entropy(logits, targets, reduction="none") + kl_beta * token_kl(logits, ref_logits)
    per_sample = torch.zeros(batch_size, dtype=per_token.dtype, device=per_token.device).index_add(
        0, sample_idx, per_token
    )
    counts = torch.bincount(sample_idx, minlength=batch_size).clamp(min=1).to(per_token.dtype)
    return (weights * per_sample / counts).sum() / batch_size


@dataclasses.dataclass(frozen=True)
class SftKlSettings:
    """SFT_KL's coefficient (EAFT App. F.2: β = 0.5)."""

    kl_beta: float = number(SFT_KL_BETA, lo=0.0, help="KL coefficient beta (EAFT App. F.2: 0.5)")


@LOSSES.register("sft_kl")
class SFTKL(Loss):
    """SFT + ``kl_beta`` · KL(π_θ ‖ π_ref) at every label position; π_ref is the base model (adapter disabled).
    It ``needs`` a reference forward: the trainer of :func:`kaft.train.trainers.reference_trainer_class` runs one per batch."""

    label = "SFT_KL"
    reads = ("kl_beta",)
    needs = "reference"
    Settings = SftKlSettings

    def batch_loss(self, logits, targets, sample_idx, weights, batch_size, ref_logits=None):
        if ref_logits is None:
            raise LossError(
                f"loss {self.name} needs the reference model's logits: pass compute_loss(..., ref_logits=...) "
                f"(kaft.train.train_lora runs the adapter-disabled forward for it)"
            )
        return sft_kl_loss(logits, ref_logits, targets, sample_idx, weights, batch_size, self.s.kl_beta)
