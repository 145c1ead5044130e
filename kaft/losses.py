"""Stage 4 — training objectives: per-sample rewards (KaFT), per-token weights (EAFT, DFT), preference pairs (DPO).

Why one module: the losses differ only in *where* the down-weighting of conflicting data happens — per sample from
the detection stage (KaFT), per token from the model's own confidence (EAFT, DFT), both (``kaft_eaft``), or by
turning the model's own wrong answers into rejected responses (DPO). Every half is a pure function on plain numbers
or tensors, so each is checked against its closed form in ``tests/test_losses.py``:

* :func:`sample_weights` — once, before training, from the conflict partition: the reward ``R_i`` of each item
  (KaFT Eq. 2). ``subsets[i]`` is the item's conflict subset (0 = most conflicts, "wrong"), ``scores[i]`` its Score.
* :func:`compute_loss` — the objective of one SFT batch from the logits, the labels and the batch's rewards.
* :func:`dpo_loss` / :func:`sequence_logps` — the preference objective; the pairs come from :mod:`kaft.pairs`.

Losses live in the :data:`LOSSES` registry (``name -> Loss subclass``); add one with ``@register("name")``. One config
names one loss: combinations are losses of their own (``kaft_eaft``), never implied by extra keys, and a key of
another loss is an error that names the combination to use.

Config shapes (a ``Mapping``; an OmegaConf ``DictConfig`` works too)::

    {name: constant}                                   # plain SFT, R_i = 1
    {name: kaft, alpha: 0.1, beta: 0.5, rewards: null} # R = [alpha, beta, 1, 1] by subset (K = 4), or `rewards`
    {name: auto_adapt}                                 # R_i = Score_i  (the paper's "-w. Score" ablation)
    {name: eaft, eaft_alpha: 1.0, k: 20, normalize: const3, variant: power, mask_quantile: 0.15}
    {name: dft}                                        # token weight p(y_t), detached (Wu et al. 2025)
    {name: kaft_eaft, alpha, beta, rewards, eaft_alpha, k, normalize, variant, mask_quantile}  # R_i x EAFT weight
    {name: dpo, dpo_beta: 0.1, pairs: self_self, pair_source: sma, max_pairs: 8, num_samples: 8, temperature: 1.4,
     top_k: 50, top_p: 0.9, max_new_tokens: 4, weight_by_subset: false, alpha, beta, rewards}

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
* token-weighted (``eaft``, ``dft``, ``kaft_eaft``): ``loss = sum_t g_t * R_{i(t)} * CE_t / N`` over the N label
  tokens of the batch, the token weight ``g_t`` computed without gradient (LLaMA-Factory's ``use_eaft_loss``, TRL's
  ``loss_type="dft"``). ``R = 1`` for ``eaft`` and ``dft``; the KaFT reward for ``kaft_eaft``. Dropped tokens
  (``variant: masked``) still count in N, so a variant only changes ``g``. With one label token per sample (multiple
  choice) the token mean and the sample mean coincide.
* ``dpo``: ``loss = (1/P) * sum_p R_p * -log sigmoid(dpo_beta * ((log pi_c - log ref_c) - (log pi_r - log ref_r)))``
  over the P pairs of the batch, log-probabilities summed over each answer's tokens, ``R_p`` = the KaFT reward of
  the pair's item with ``weight_by_subset``, else 1.

EAFT token weight ``g = f(H~)`` with ``H~ = H_topk / norm`` (entropy of the softmax renormalised over the top-k
logits): ``normalize`` — ``const3`` divides by 3.0 (~ ln 20, the EAFT paper and LLaMA-Factory, fixed also when
k != 20), ``lnk`` by ln k (H~ in [0, 1]), ``none`` not at all (axolotl); ``variant`` — ``power``:
``H~ ** eaft_alpha``; ``sigmoid``: ``sigmoid(30 * (H~ - 0.17))`` (the EAFT paper's gate; the 0.17 threshold is on
the chosen scale, i.e. meant for ``const3``); ``masked``: masked SFT, weight 0 for tokens whose H~ lies strictly below the batch's
``mask_quantile`` quantile of label-token H~ (linear interpolation), 1 otherwise (scale-free: ``normalize`` does
not matter). ``eaft_alpha`` (one name in ``eaft`` and ``kaft_eaft``; EAFT §3: 1, §5.1: 2, 3) only acts in
``power``.

Under gradient accumulation every micro-batch is reduced on its own and the trainer divides by the number of
micro-batches (for EAFT LLaMA-Factory divides by the label tokens of the whole accumulated batch instead; the two
agree whenever micro-batches hold equally many label tokens, e.g. one answer token per sample). The ``masked``
quantile is per micro-batch.

Only the label positions' logits are gathered and upcast to float32, never the whole ``[B, T, V]`` tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F

from kaft.pairs import CHOSEN as PAIR_MODES
from kaft.pairs import PAIR_SOURCES

IGNORE_INDEX = -100
EAFT_ENTROPY_NORM = 3.0  # ~ ln(20); the EAFT paper (Eq. 3) and LLaMA-Factory, fixed whatever k
EAFT_SIGMOID_SCALE, EAFT_SIGMOID_CENTER = 30.0, 0.17  # the EAFT paper's sigmoid gate


# ----------------------------------------------------------------------------------------------- registry
class Loss:
    """A training objective. Subclasses override what differs; the defaults are plain (weighted) SFT."""

    name: ClassVar[str] = ""
    #: config keys this loss accepts besides ``name`` (a typo such as ``alhpa`` is an error, not a silent default)
    keys: ClassVar[tuple[str, ...]] = ()
    #: the losses this one combines (a config of one of them with the other's keys is pointed here)
    combines: ClassVar[tuple[str, ...]] = ()
    #: trains on preference pairs built from sampled answers (see :func:`is_pairwise`, :func:`needs_samples`)
    pairwise: ClassVar[bool] = False
    #: old key -> its current name (an old config gets a one-line pointer instead of "unknown key")
    renamed: ClassVar[dict[str, str]] = {}

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
def _number(cfg: Mapping, key: str, default: float, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> float:
    name = cfg.get("name")
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"loss {name}: '{key}' must be a finite number, got {value!r}")
    value = float(value)
    if (lo is not None and (value < lo or (lo_open and value == lo))) or \
            (hi is not None and (value > hi or (hi_open and value == hi))):
        if hi is None:
            rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
        else:
            rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"loss {name}: '{key}' must be in {rng}, got {value:g}" if hi is not None else
                         f"loss {name}: '{key}' must be {rng}, got {value:g}")
    return value


def _integer(cfg: Mapping, key: str, default: int, lo: int, what: str) -> int:
    value = cfg.get(key, default)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"loss {cfg.get('name')}: '{key}' ({what}) must be an integer >= {lo}, got {value!r}")
    return value


def _choice(cfg: Mapping, key: str, default: str, choices: Mapping | Sequence) -> str:
    value = cfg.get(key, default)
    value = default if value is None else value
    if value not in choices:
        raise ValueError(f"loss {cfg.get('name')}: unknown {key} {value!r}; choose one of {list(choices)}")
    return value


def get_loss(cfg: Mapping) -> type[Loss]:
    """The registered :class:`Loss` class a config names (``ValueError`` for an unknown name)."""
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
        raise ValueError(f"loss config must be a mapping with a 'name', got {type(cfg).__name__}")
    name = cfg.get("name")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; set loss.name to one of {sorted(LOSSES)}")
    return LOSSES[name]


_get_loss = get_loss


def _unknown_keys_message(cls: type[Loss], unknown: list[str]) -> str:
    allowed = ", ".join(cls.keys) or "none"
    moved = [k for k in unknown if k in cls.renamed]
    if moved:
        old, new = moved[0], cls.renamed[moved[0]]
        return (f"loss {cls.name}: '{old}' is now '{new}' (set loss.{new}=..., or the top-level {old}=... which "
                f"feeds it); it accepts: {allowed}")
    msg = f"loss {cls.name}: unknown key(s) {unknown}; it accepts: {allowed}"
    owners = sorted(n for n, c in LOSSES.items() if n != cls.name and set(unknown) <= set(c.keys))
    if owners:
        combos = sorted(n for n, c in LOSSES.items() if cls.name in c.combines and set(unknown) <= set(c.keys))
        msg += f". {unknown} belong to loss {', '.join(owners)}; a config names one loss"
        msg += f" — to combine them use loss={combos[0]}" if combos else " — set loss.name to that loss instead"
    return msg


# ----------------------------------------------------------------------------------------------- weighted CE
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
        name = cfg.get("name")
        rewards = cfg.get("rewards")
        if rewards is not None:
            if isinstance(rewards, (str, bytes)) or not hasattr(rewards, "__len__"):
                raise ValueError(f"loss {name}: 'rewards' must be a list of {k} numbers (one per subset), "
                                 f"got {rewards!r}")
            rewards = list(rewards)
            if len(rewards) != k:
                raise ValueError(f"loss {name}: 'rewards' has {len(rewards)} entries but the data is split into "
                                 f"K={k} subsets; give exactly {k} (subset 0 = most conflicts first)")
            return [_number({"name": name, f"rewards[{i}]": r}, f"rewards[{i}]", 1.0, lo=0.0)
                    for i, r in enumerate(rewards)]
        if k != 4:
            raise ValueError(f"loss {name}: alpha/beta define rewards for K=4 subsets only; with K={k} set "
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


# ----------------------------------------------------------------------------------------------- token weights
def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the softmax renormalised over the top-``k`` logits of each row (last dim), no gradient."""
    with torch.no_grad():
        top, _ = torch.topk(logits.detach().float(), k=k, dim=-1)
        logp = top - torch.logsumexp(top, dim=-1, keepdim=True)
        return -(logp.exp() * logp).sum(dim=-1)


#: ``normalize`` -> the divisor of the top-k entropy, given k
EAFT_NORMALIZERS: dict[str, Callable[[int], float]] = {
    "const3": lambda k: EAFT_ENTROPY_NORM,  # LLaMA-Factory / EAFT paper
    "lnk": lambda k: math.log(k),           # the maximum top-k entropy: H~ in [0, 1]
    "none": lambda k: 1.0,                  # axolotl
}


def _masked_gate(h: torch.Tensor, alpha: float, q: float) -> torch.Tensor:
    return (h >= torch.quantile(h, q)).to(h.dtype)


#: ``variant`` -> gate(H~ [N], alpha, mask_quantile) -> token weights [N]
EAFT_VARIANTS: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "power": lambda h, alpha, q: torch.pow(h, alpha),
    "sigmoid": lambda h, alpha, q: torch.sigmoid(EAFT_SIGMOID_SCALE * (h - EAFT_SIGMOID_CENTER)),
    "masked": _masked_gate,
}


def eaft_token_weights(logits: torch.Tensor, alpha: float = 1.0, k: int = 20, normalize: str = "const3",
                       variant: str = "power", mask_quantile: float = 0.15) -> torch.Tensor:
    """EAFT's token weights per row of ``logits`` [..., V], detached (see the module docstring for the options;
    the defaults are LLaMA-Factory's ``(H_topk / 3.0) ** alpha``). ``masked`` takes its quantile over all rows."""
    if logits.size(-1) < k:
        raise ValueError(f"loss eaft: k={k} exceeds the vocabulary size {logits.size(-1)}; lower loss.k")
    h = topk_entropy(logits, k) / EAFT_NORMALIZERS[normalize](k)
    if variant == "masked":
        return _masked_gate(h.reshape(-1), alpha, mask_quantile).reshape(h.shape)
    return EAFT_VARIANTS[variant](h, alpha, mask_quantile)


def dft_token_weights(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DFT's token weight: the model's probability of the target token, ``p(y_t)``, detached."""
    with torch.no_grad():
        return torch.exp(-F.cross_entropy(logits.detach().float(), targets, reduction="none"))


class TokenWeighted(Loss):
    """``loss = sum_t g_t * R_{i(t)} * CE_t / N``: subclasses give the detached token weights ``g``."""

    @classmethod
    def token_weights(cls, cfg: Mapping, logits: torch.Tensor, targets: torch.Tensor,
                      ce: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def loss(cls, cfg: Mapping, logits: torch.Tensor, targets: torch.Tensor, sample_idx: torch.Tensor,
             weights: torch.Tensor, batch_size: int) -> torch.Tensor:
        ce = F.cross_entropy(logits, targets, reduction="none")
        with torch.no_grad():
            gate = cls.token_weights(cfg, logits.detach(), targets, ce.detach())
        return (ce * gate * weights[sample_idx]).sum() / ce.numel()


def eaft_settings(cfg: Mapping) -> dict:
    """The validated EAFT options of a config (``eaft_alpha``: the entropy exponent, default 1.0 as in EAFT §3)."""
    return {
        "alpha": _number(cfg, "eaft_alpha", 1.0, lo=0.0),
        "k": _integer(cfg, "k", 20, 2, "top-k tokens for the entropy"),
        "normalize": _choice(cfg, "normalize", "const3", EAFT_NORMALIZERS),
        "variant": _choice(cfg, "variant", "power", EAFT_VARIANTS),
        "mask_quantile": _number(cfg, "mask_quantile", 0.15, 0.0, 1.0, hi_open=True),
    }


EAFT_KEYS = ("eaft_alpha", "k", "normalize", "variant", "mask_quantile")


@register("eaft")
class EAFT(TokenWeighted):
    """Entropy-adaptive fine-tuning (EAFT paper Eq. 2-3, LLaMA-Factory ``use_eaft_loss``)."""

    keys = EAFT_KEYS
    renamed = {"alpha": "eaft_alpha"}

    @classmethod
    def validate(cls, cfg: Mapping, k: int) -> None:
        eaft_settings(cfg)

    @classmethod
    def token_weights(cls, cfg, logits, targets, ce):
        return eaft_token_weights(logits, **eaft_settings(cfg))


@register("dft")
class DFT(TokenWeighted):
    """Dynamic fine-tuning (Wu et al. 2025; TRL ``loss_type="dft"``): token weight ``p(y_t)``, detached."""

    @classmethod
    def token_weights(cls, cfg, logits, targets, ce):
        return torch.exp(-ce)


@register("kaft_eaft")
class KaFTEAFT(TokenWeighted):
    """KaFT's sample reward ``R_i`` times EAFT's token weight. ``alpha``/``beta``/``rewards`` are KaFT's; the EAFT
    entropy exponent is ``eaft_alpha``, as in ``eaft``."""

    keys = (*KaFT.keys, *EAFT_KEYS)
    combines = ("kaft", "eaft")

    @classmethod
    def validate(cls, cfg: Mapping, k: int) -> None:
        KaFT.validate(cfg, k)
        eaft_settings(cfg)

    @classmethod
    def weights(cls, cfg, subsets, scores, k):
        return KaFT.weights(cfg, subsets, scores, k)

    @classmethod
    def token_weights(cls, cfg, logits, targets, ce):
        return eaft_token_weights(logits, **eaft_settings(cfg))


# ----------------------------------------------------------------------------------------------- preference
def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): ``(1/P) * sum_p w_p * -log sigmoid(beta * ((pc - rc) - (pr - rr)))``.

    Arguments are the [P] sequence log-probabilities of the chosen / rejected answers under the policy and the
    reference; ``weights`` [P] default to 1.
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    per_pair = -F.logsigmoid(margin)
    if weights is None:
        return per_pair.mean()
    return (weights.to(per_pair) * per_pair).sum() / per_pair.numel()


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None,
                   labels_shifted: bool = False) -> torch.Tensor:
    """``[P]`` sums of ``log p(label)`` over each label row's tokens (``-100`` skipped).

    ``labels`` [P, T] is scored against ``logits[rows[p]]`` (``rows`` default ``arange(P)``; two label rows may
    share one logits row, e.g. the chosen and the rejected answer letter after the same prompt). Same shift
    convention as :func:`compute_loss`; only the label positions' logits are upcast.
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


def _flag(cfg: Mapping, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise ValueError(f"loss {cfg.get('name')}: '{key}' must be true or false, got {value!r}")
    return value


SMA_SAMPLING = ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens")


@register("dpo")
class DPO(Loss):
    """DPO on (reference or correct self-answer, the model's own wrong answer) pairs (:mod:`kaft.pairs`): SMA's
    n = 8 fresh samples per query, correct × incorrect, down-sampled to ``max_pairs`` (``pair_source=sma``), or the
    detection's samples, one pair per distinct wrong option (``detection``); the reference policy is the base model
    (the LoRA adapter disabled). With ``weight_by_subset`` each pair is weighted by its item's KaFT reward."""

    keys = ("dpo_beta", "pairs", "pair_source", "max_pairs", *SMA_SAMPLING, "weight_by_subset", *KaFT.keys)
    pairwise = True

    @classmethod
    def settings(cls, cfg: Mapping) -> dict:
        """Validated DPO options; the SMA sampling ones (§4.1: n = 8, T = 1.4 for Qwen2, top-k 50, top-p 0.9) are
        read whatever ``pair_source`` is, so a typo is caught either way."""
        return {
            "beta": _number(cfg, "dpo_beta", 0.1, lo=0.0, lo_open=True),
            "pairs": _choice(cfg, "pairs", "self_self", PAIR_MODES),
            "pair_source": _choice(cfg, "pair_source", "sma", PAIR_SOURCES),
            "max_pairs": _integer(cfg, "max_pairs", 8, 1, "pairs per item"),
            "weight_by_subset": _flag(cfg, "weight_by_subset", False),
            "num_samples": _integer(cfg, "num_samples", 8, 1, "SMA responses per query"),
            "temperature": _number(cfg, "temperature", 1.4, lo=0.0, lo_open=True),
            "top_k": _integer(cfg, "top_k", 50, 0, "top-k of the sampling, 0 = off"),
            "top_p": _number(cfg, "top_p", 0.9, 0.0, 1.0, lo_open=True),
            "max_new_tokens": _integer(cfg, "max_new_tokens", 4, 1, "tokens per sampled response"),
        }

    @classmethod
    def validate(cls, cfg: Mapping, k: int) -> None:
        s = cls.settings(cfg)
        _number(cfg, "alpha", 0.1, 0.0, 1.0)
        _number(cfg, "beta", 0.5, 0.0, 1.0)
        if s["weight_by_subset"]:
            KaFT.rewards(cfg, k)

    @classmethod
    def weights(cls, cfg, subsets, scores, k):
        if cls.settings(cfg)["weight_by_subset"]:
            return KaFT.weights(cfg, subsets, scores, k)
        return [1.0] * len(subsets)

    @classmethod
    def loss(cls, cfg, logits, targets, sample_idx, weights, batch_size):
        raise ValueError("loss dpo trains on preference pairs: use kaft.train.train_lora(..., records=...) "
                         "(or kaft.losses.dpo_loss), not compute_loss")


# ----------------------------------------------------------------------------------------------- public API
def validate_loss_cfg(loss_cfg: Mapping, k: int) -> None:
    """Check a loss config against the number of conflict subsets ``k``; call before any model loads."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of conflict subsets K must be a positive integer, got {k!r}")
    cls = get_loss(loss_cfg)
    unknown = sorted(set(loss_cfg.keys()) - {"name", *cls.keys})
    if unknown:
        raise ValueError(_unknown_keys_message(cls, unknown))
    cls.validate(loss_cfg, k)


def is_pairwise(loss_cfg: Mapping) -> bool:
    """Whether the loss trains on preference pairs built from sampled answers (``train_lora(..., records=...)``)."""
    return get_loss(loss_cfg).pairwise


def needs_samples(loss_cfg: Mapping) -> bool:
    """Whether the loss builds its pairs from the *detection's* sampled answers (DPO with ``pair_source=detection``):
    such a run needs a detection that saves them (``kaft.detect.saves_samples``)."""
    return is_pairwise(loss_cfg) and DPO.settings(loss_cfg)["pair_source"] == "detection"


def sma_sampling(loss_cfg: Mapping) -> dict | None:
    """The sampling settings of a loss that draws its own responses (DPO ``pair_source=sma``), else None."""
    if not is_pairwise(loss_cfg):
        return None
    s = DPO.settings(loss_cfg)
    return {k: s[k] for k in SMA_SAMPLING} if s["pair_source"] == "sma" else None


def sample_weights(loss_cfg: Mapping, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
    """Per-item rewards ``R_i`` from each item's conflict subset (0 = most conflicts) and conflict Score."""
    validate_loss_cfg(loss_cfg, k)
    if len(subsets) != len(scores):
        raise ValueError(f"sample_weights: {len(subsets)} subsets but {len(scores)} scores; give one of each per item")
    for i, s in enumerate(subsets):
        if isinstance(s, bool) or int(s) != s or not 0 <= int(s) < k:
            raise ValueError(f"sample_weights: item {i} is in subset {s!r}, expected an integer in [0, {k - 1}]")
    return [float(w) for w in get_loss(loss_cfg).weights(loss_cfg, [int(s) for s in subsets], scores, k)]


def compute_loss(loss_cfg: Mapping, logits: torch.Tensor, labels: torch.Tensor, weights: Any,
                 labels_shifted: bool = False) -> torch.Tensor:
    """The scalar training loss of one batch.

    ``logits`` [B, T, V] (any float dtype), ``labels`` [B, T] with ``-100`` where there is no loss, aligned with the
    input ids (HF causal-LM convention; shifted here unless ``labels_shifted``), ``weights`` [B] the per-sample
    rewards (a tensor or a sequence). See the module docstring for the reductions.
    """
    cls = get_loss(loss_cfg)
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
