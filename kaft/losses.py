"""Stage 4 — training objectives: per-sample rewards (KaFT) and per-token entropy gating (EAFT).

A loss has two halves, both pure functions on plain numbers / tensors:

* :func:`sample_weights` — computed once, before training, from the conflict partition: the reward ``R_i`` of each
  training item (KaFT paper, Eq. 2). ``subsets[i]`` is the item's conflict subset (0 = most conflicts, "wrong"),
  ``scores[i]`` its conflict Score in [0, 1].
* :func:`compute_loss` — the objective of one batch, given the model's logits, the labels and the batch's weights.

Losses live in the :data:`LOSSES` registry (``name -> Loss subclass``); add one with ``@register("name")``.

Config shapes (a ``Mapping``; an OmegaConf ``DictConfig`` works too)::

    {name: constant}                                   # plain SFT, R_i = 1
    {name: kaft, alpha: 0.1, beta: 0.5, rewards: null} # R = [alpha, beta, 1, 1] by subset (K = 4), or `rewards`
    {name: auto_adapt}                                 # R_i = Score_i  (the paper's "-w. Score" ablation)
    {name: eaft, alpha: 1.0, k: 20}                    # per-token weight (H_topk / 3.0) ** alpha, R_i = 1

Label convention (the Hugging Face causal-LM one): ``labels`` is aligned with ``input_ids`` — ``labels[b, t]`` is
the token *at* position ``t`` (``-100`` = no loss) — and is shifted here: ``logits[:, t]`` is scored against
``labels[:, t + 1]``. Pass ``labels_shifted=True`` when ``logits[:, t]`` already pairs with ``labels[:, t]`` (the
trainer does, after keeping only the label positions' logits).

Reductions (what one batch's loss means):

* weighted CE (``constant``, ``kaft``, ``auto_adapt``): ``CE_i`` = mean token CE over sample i's label tokens, and
  ``loss = (1/B) * sum_i R_i * CE_i`` — a mean over *samples*, every sample counted in ``B`` whatever its weight, so
  ``alpha = 0.1`` really scales that sample's gradient by 0.1 (normalising by ``sum_i R_i`` would undo the
  down-weighting of a batch made only of "wrong" items). With all ``R_i = 1`` and one label token per sample this is
  the plain mean token CE; with ragged label counts it is a mean of per-sample means (each sample counts once).
* ``eaft``: ``loss = sum_t w_t * R_{i(t)} * CE_t / N`` over the N label tokens of the batch, with
  ``w_t = (H_topk(t) / 3.0) ** alpha`` computed without gradient (LLaMA-Factory's ``use_eaft_loss``; its sample
  weights are all 1, so ``R`` drops out). The ``3.0`` (~ ln 20) is fixed, as in the EAFT paper and LLaMA-Factory,
  also when ``k`` != 20.

Under gradient accumulation every micro-batch is reduced on its own and the trainer divides by the number of
micro-batches (for EAFT LLaMA-Factory divides by the label tokens of the whole accumulated batch instead; the two
agree whenever micro-batches hold equally many label tokens, e.g. one answer token per sample).

Only the label positions' logits are gathered and upcast to float32, never the whole ``[B, T, V]`` tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
EAFT_ENTROPY_NORM = 3.0  # ~ ln(20); fixed as in the EAFT paper (Eq. 3) and LLaMA-Factory


# ----------------------------------------------------------------------------------------------- registry
class Loss:
    """A training objective. Subclasses override what differs; the defaults are plain (weighted) SFT."""

    name: ClassVar[str] = ""
    #: config keys this loss accepts besides ``name`` (a typo such as ``alhpa`` is an error, not a silent default)
    keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate(cls, cfg: Mapping, k: int) -> None:
        """Raise ``ValueError`` (one actionable line) for an impossible config."""

    @classmethod
    def weights(cls, cfg: Mapping, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        return [1.0] * len(subsets)

    @classmethod
    def loss(cls, cfg: Mapping, logits: torch.Tensor, targets: torch.Tensor, sample_idx: torch.Tensor,
             weights: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The batch loss from the label positions only.

        ``logits`` [N, V] (float32) and ``targets`` [N] are the N label tokens of the batch, ``sample_idx`` [N] the
        sample each belongs to, ``weights`` [B] (float32) the per-sample rewards.
        """
        ce = F.cross_entropy(logits, targets, reduction="none")
        per_sample = torch.zeros(batch_size, dtype=ce.dtype, device=ce.device).index_add(0, sample_idx, ce)
        counts = torch.bincount(sample_idx, minlength=batch_size).clamp(min=1).to(ce.dtype)
        return (weights * per_sample / counts).sum() / batch_size


LOSSES: dict[str, type[Loss]] = {}


def register(name: str) -> Callable[[type[Loss]], type[Loss]]:
    """Class decorator: ``@register("my_loss") class MyLoss(Loss): ...`` makes ``{name: my_loss}`` usable."""

    def deco(cls: type[Loss]) -> type[Loss]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered ({LOSSES[name].__qualname__})")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return deco


# ----------------------------------------------------------------------------------------------- helpers
def _number(cfg: Mapping, key: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    name = cfg.get("name")
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"loss {name}: '{key}' must be a finite number, got {value!r}")
    value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise ValueError(f"loss {name}: '{key}' must be in {rng}, got {value:g}")
    return value


def _get_loss(cfg: Mapping) -> type[Loss]:
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
        raise ValueError(f"loss config must be a mapping with a 'name', got {type(cfg).__name__}")
    name = cfg.get("name")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; set loss.name to one of {sorted(LOSSES)}")
    return LOSSES[name]


# ----------------------------------------------------------------------------------------------- losses
@register("constant")
class Constant(Loss):
    """Vanilla SFT: every sample has reward 1."""


@register("kaft")
class KaFT(Loss):
    """KaFT (paper Eq. 2): reward alpha for subset 0 ("wrong"), beta for subset 1 ("might-wrong"), 1 otherwise.

    For K != 4 subsets, or to override alpha/beta, give ``rewards`` (one per subset, subset 0 first).
    """

    keys = ("alpha", "beta", "rewards")

    @classmethod
    def rewards(cls, cfg: Mapping, k: int) -> list[float]:
        rewards = cfg.get("rewards")
        if rewards is not None:
            if isinstance(rewards, (str, bytes)) or not hasattr(rewards, "__len__"):
                raise ValueError(f"loss kaft: 'rewards' must be a list of {k} numbers (one per subset), got {rewards!r}")
            rewards = list(rewards)
            if len(rewards) != k:
                raise ValueError(f"loss kaft: 'rewards' has {len(rewards)} entries but the data is split into K={k} "
                                 f"subsets; give exactly {k} (subset 0 = most conflicts first)")
            return [_number({"name": "kaft", f"rewards[{i}]": r}, f"rewards[{i}]", 1.0, lo=0.0)
                    for i, r in enumerate(rewards)]
        if k != 4:
            raise ValueError(f"loss kaft: alpha/beta define rewards for K=4 subsets only; with K={k} set "
                             f"loss.rewards to a list of {k} numbers (subset 0 = most conflicts first)")
        alpha = _number(cfg, "alpha", 0.1, 0.0, 1.0)
        beta = _number(cfg, "beta", 0.5, 0.0, 1.0)
        return [alpha, beta, 1.0, 1.0]

    @classmethod
    def validate(cls, cfg: Mapping, k: int) -> None:
        _number(cfg, "alpha", 0.1, 0.0, 1.0)  # checked even when `rewards` overrides them: a bad value is a typo
        _number(cfg, "beta", 0.5, 0.0, 1.0)
        cls.rewards(cfg, k)

    @classmethod
    def weights(cls, cfg: Mapping, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        rewards = cls.rewards(cfg, k)
        return [rewards[s] for s in subsets]


@register("auto_adapt")
class AutoAdapt(Loss):
    """The paper's "-w. Score" variant: the reward is the item's conflict Score itself."""

    @classmethod
    def weights(cls, cfg: Mapping, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        out = []
        for i, s in enumerate(scores):
            s = float(s)
            if not 0.0 <= s <= 1.0:  # also rejects NaN
                raise ValueError(f"loss auto_adapt: conflict score of item {i} is {s!r}, expected a value in [0, 1]")
            out.append(s)
        return out


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the softmax renormalised over the top-``k`` logits of each row (last dim), no gradient."""
    with torch.no_grad():
        top, _ = torch.topk(logits.detach().float(), k=k, dim=-1)
        logp = top - torch.logsumexp(top, dim=-1, keepdim=True)
        return -(logp.exp() * logp).sum(dim=-1)


def eaft_token_weights(logits: torch.Tensor, alpha: float = 1.0, k: int = 20) -> torch.Tensor:
    """EAFT's gating ``(H_topk / 3.0) ** alpha`` per row of ``logits`` [..., V], detached."""
    if logits.size(-1) < k:
        raise ValueError(f"loss eaft: k={k} exceeds the vocabulary size {logits.size(-1)}; lower loss.k")
    return torch.pow(topk_entropy(logits, k) / EAFT_ENTROPY_NORM, alpha)


@register("eaft")
class EAFT(Loss):
    """Entropy-adaptive fine-tuning (EAFT paper Eq. 2-3, LLaMA-Factory ``use_eaft_loss``)."""

    keys = ("alpha", "k")

    @classmethod
    def _k(cls, cfg: Mapping) -> int:
        k = cfg.get("k", 20)
        k = 20 if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"loss eaft: 'k' (top-k tokens for the entropy) must be an integer >= 2, got {k!r}")
        return k

    @classmethod
    def validate(cls, cfg: Mapping, k: int) -> None:
        _number(cfg, "alpha", 1.0, lo=0.0)
        cls._k(cfg)

    @classmethod
    def loss(cls, cfg: Mapping, logits: torch.Tensor, targets: torch.Tensor, sample_idx: torch.Tensor,
             weights: torch.Tensor, batch_size: int) -> torch.Tensor:
        ce = F.cross_entropy(logits, targets, reduction="none")
        gate = eaft_token_weights(logits, _number(cfg, "alpha", 1.0, lo=0.0), cls._k(cfg))
        return (ce * gate * weights[sample_idx]).sum() / ce.numel()


# ----------------------------------------------------------------------------------------------- public API
def validate_loss_cfg(loss_cfg: Mapping, k: int) -> None:
    """Check a loss config against the number of conflict subsets ``k``; call before any model loads."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of conflict subsets K must be a positive integer, got {k!r}")
    cls = _get_loss(loss_cfg)
    unknown = sorted(set(loss_cfg.keys()) - {"name", *cls.keys})
    if unknown:
        allowed = ", ".join(cls.keys) or "none"
        raise ValueError(f"loss {cls.name}: unknown key(s) {unknown}; it accepts: {allowed}")
    cls.validate(loss_cfg, k)


def sample_weights(loss_cfg: Mapping, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
    """Per-item rewards ``R_i`` from each item's conflict subset (0 = most conflicts) and conflict Score."""
    validate_loss_cfg(loss_cfg, k)
    if len(subsets) != len(scores):
        raise ValueError(f"sample_weights: {len(subsets)} subsets but {len(scores)} scores; give one of each per item")
    for i, s in enumerate(subsets):
        if isinstance(s, bool) or int(s) != s or not 0 <= int(s) < k:
            raise ValueError(f"sample_weights: item {i} is in subset {s!r}, expected an integer in [0, {k - 1}]")
    return [float(w) for w in _get_loss(loss_cfg).weights(loss_cfg, [int(s) for s in subsets], scores, k)]


def compute_loss(loss_cfg: Mapping, logits: torch.Tensor, labels: torch.Tensor, weights: Any,
                 labels_shifted: bool = False) -> torch.Tensor:
    """The scalar training loss of one batch.

    ``logits`` [B, T, V] (any float dtype), ``labels`` [B, T] with ``-100`` where there is no loss, aligned with the
    input ids (HF causal-LM convention; shifted here unless ``labels_shifted``), ``weights`` [B] the per-sample
    rewards (a tensor or a sequence). See the module docstring for the reductions.
    """
    cls = _get_loss(loss_cfg)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"compute_loss: expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    batch_size = logits.size(0)
    weights = torch.as_tensor(weights, device=logits.device).to(torch.float32).reshape(-1)
    if weights.numel() != batch_size:
        raise ValueError(f"compute_loss: {weights.numel()} weights for a batch of {batch_size}")
    labels = labels.to(logits.device)
    if not labels_shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0  # keeps the graph: backward works and changes nothing
    sample_idx, pos = mask.nonzero(as_tuple=True)
    return cls.loss(loss_cfg, logits[sample_idx, pos].float(), labels[sample_idx, pos], sample_idx, weights,
                    batch_size)
