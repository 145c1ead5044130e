"""The :class:`Loss` base class, the :data:`LOSSES` registry, and the module API the pipeline calls.

A loss *declares* what the rest of kaft needs to know about it — its table label, the hyperparameters a results
table shows for it, whether it trains on per-sample weights or on preference pairs, whether it needs sampled
answers — so the pipeline, the trainer and the analysis ask the declaration and never branch on a loss's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from kaft.fields import suggest
from kaft.lazy import LazyModule
from kaft.losses.settings import LossError, NoSettings, keys_of, parse
from kaft.registry import Registry

torch = LazyModule("torch")  # imported when a loss is computed, not when it is checked (kaft/lazy.py)
F = LazyModule("torch.nn.functional")

IGNORE_INDEX = -100


class Loss:
    """A training objective built from one config: ``LOSSES.get(name)(name, settings)``.

    Subclasses override what differs; the defaults are plain SFT (every sample weight 1, weighted CE).
    """

    #: the row label the paper's tables use for this loss
    label: ClassVar[str] = ""
    #: the config keys of the hyperparameters a results table shows for this loss (its swept settings)
    reads: ClassVar[tuple[str, ...]] = ()
    #: what training feeds it: "weights" (SFT batches with per-sample rewards), "reference" (the same, plus the
    #: reference model's logits: SFT_KL) or "pairs" (preference pairs)
    needs: ClassVar[str] = "weights"
    #: the typed settings (a frozen dataclass whose fields are the config keys besides ``name``)
    Settings: ClassVar[type] = NoSettings
    #: the losses this one combines (a config of one of them with the other's keys is pointed here)
    combines: ClassVar[tuple[str, ...]] = ()
    #: old key -> its current name (an old config gets a one-line pointer instead of "unknown key")
    renamed: ClassVar[dict[str, str]] = {}
    #: the training targets (``train.target`` resolved, :mod:`kaft.targets`) it can train on; kaft.schema refuses
    #: the others before any model loads
    targets: ClassVar[tuple[str, ...]] = ("letter", "option", "response")
    #: keys added after its configs were first cached, whose default reproduces what it did before -> that default:
    #: left out of the train key and the job identity while at it (:func:`key_config`; the loss-level counterpart of
    #: :data:`kaft.defaults.NEW_DEFAULTS`, declared by the loss that owns the key)
    new_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, settings: Any):
        self.name, self.s = name, settings

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config keys this loss accepts besides ``name``."""
        return keys_of(cls.Settings)

    def check(self, k: int) -> None:
        """Checks that depend on the number of conflict subsets ``k`` (raise :class:`LossError`)."""

    def weights(self, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
        """The per-item rewards ``R_i`` from each item's conflict subset (0 = most conflicts) and Score."""
        return [1.0] * len(subsets)

    def batch_loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        sample_idx: torch.Tensor,
        weights: torch.Tensor,
        batch_size: int,
    ) -> torch.Tensor:
        """The batch loss from the label positions only: ``logits`` [N, V] (float32) and ``targets`` [N] are the N
        label tokens, ``sample_idx`` [N] the sample each belongs to, ``weights`` [B] the per-sample rewards.
        Default: ``(1/B) * sum_i R_i * CE_i`` with ``CE_i`` the mean CE over sample i's label tokens."""
        ce = F.cross_entropy(logits, targets, reduction="none")
        per_sample = torch.zeros(batch_size, dtype=ce.dtype, device=ce.device).index_add(0, sample_idx, ce)
        counts = torch.bincount(sample_idx, minlength=batch_size).clamp(min=1).to(ce.dtype)
        return (weights * per_sample / counts).sum() / batch_size

    def needs_detection_samples(self) -> bool:
        """Whether it builds its training data from the *detection's* sampled answers."""
        return False

    def sampling(self, freeform: bool = False) -> dict | None:
        """The settings of the responses it samples itself before training (None: it samples none); ``freeform``:
        for free-form items (whole responses, not a letter)."""
        return None


#: ``name -> Loss subclass``; add one with ``@LOSSES.register("name")``
LOSSES: Registry[type[Loss]] = Registry("loss")


def get_loss(cfg: Mapping) -> type[Loss]:
    """The registered :class:`Loss` class a config names (a one-line ConfigError for an unknown name)."""
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
        raise LossError(f"loss config must be a mapping with a 'name', got {type(cfg).__name__}")
    return LOSSES.get(cfg.get("name"))


def _unknown_keys_message(cls: type[Loss], name: str, unknown: list[str]) -> str:
    allowed = ", ".join(cls.keys()) or "none"
    moved = [k for k in unknown if k in cls.renamed]
    if moved:
        old, new = moved[0], cls.renamed[moved[0]]
        top = f", or the top-level {old}=... which feeds it" if old in ("alpha", "beta") else ""
        return f"loss {name}: '{old}' is now '{new}' (set loss.{new}=...{top}); it accepts: {allowed}"
    msg = f"loss {name}: unknown key(s) {unknown}; it accepts: {allowed}"
    others = [(n, c) for n, c in LOSSES.items() if n != name and set(unknown) <= set(c.keys())]
    near = suggest(unknown[0], cls.keys())
    if near and not others:
        msg += f"; did you mean loss.{near}?"
    if others:
        combos = sorted(n for n, c in others if name in c.combines)
        msg += f". {unknown} belong to loss {', '.join(n for n, _ in others)}; a config names one loss"
        msg += f" — to combine them use loss={combos[0]}" if combos else " — set loss.name to that loss instead"
    return msg


def make_loss(cfg: Mapping) -> Loss:
    """The loss a config names, its settings parsed and checked (all but the K-dependent checks)."""
    cls = get_loss(cfg)
    name = cfg.get("name")
    unknown = sorted(set(cfg.keys()) - {"name", *cls.keys()})
    if unknown:
        raise LossError(_unknown_keys_message(cls, name, unknown))
    return cls(name, parse(cls.Settings, name, cfg))


# ----------------------------------------------------------------------------------------------- module API
def validate_loss_cfg(loss_cfg: Mapping, k: int) -> None:
    """Check a loss config against the number of conflict subsets ``k``; call before any model loads."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LossError(f"the number of conflict subsets K must be a positive integer, got {k!r}")
    make_loss(loss_cfg).check(k)


def is_pairwise(loss_cfg: Mapping) -> bool:
    """Whether the loss trains on preference pairs built from sampled answers (``train_lora(..., records=...)``)."""
    return get_loss(loss_cfg).needs == "pairs"


def needs_samples(loss_cfg: Mapping) -> bool:
    """Whether the loss builds its pairs from the *detection's* sampled answers: such a run needs a detection that
    saves them."""
    return make_loss(loss_cfg).needs_detection_samples()


def sma_sampling(loss_cfg: Mapping, freeform: bool = False) -> dict | None:
    """The sampling settings of a loss that draws its own responses (DPO ``pair_source=sma``, ``sft_self``) for
    multiple-choice or (``freeform``) free-form items, else None."""
    return make_loss(loss_cfg).sampling(freeform)


def key_config(loss_cfg: Mapping) -> dict:
    """The loss config as cache keys and the job identity see it: its :attr:`Loss.new_defaults` keys left out while
    they hold their default, so adding such a key changed no existing job's key. An unknown loss is returned as is
    (its error comes from the config check)."""
    cls = LOSSES.get(loss_cfg.get("name")) if loss_cfg.get("name") in LOSSES else Loss
    return {k: v for k, v in loss_cfg.items() if not (k in cls.new_defaults and v == cls.new_defaults[k])}


def sample_weights(loss_cfg: Mapping, subsets: Sequence[int], scores: Sequence[float], k: int) -> list[float]:
    """Per-item rewards ``R_i`` from each item's conflict subset (0 = most conflicts) and conflict Score."""
    validate_loss_cfg(loss_cfg, k)
    if len(subsets) != len(scores):
        raise LossError(f"sample_weights: {len(subsets)} subsets but {len(scores)} scores; give one of each per item")
    for i, s in enumerate(subsets):
        if isinstance(s, bool) or int(s) != s or not 0 <= int(s) < k:
            raise LossError(f"sample_weights: item {i} is in subset {s!r}, expected an integer in [0, {k - 1}]")
    return [float(w) for w in make_loss(loss_cfg).weights([int(s) for s in subsets], scores, k)]


def compute_loss(
    loss_cfg: Mapping,
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: Any,
    labels_shifted: bool = False,
    ref_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar training loss of one batch.

    ``logits`` [B, T, V] (any float dtype), ``labels`` [B, T] with ``-100`` where there is no loss, aligned with the
    input ids (HF causal-LM convention; shifted here unless ``labels_shifted``), ``weights`` [B] the per-sample
    rewards (a tensor or a sequence). Only the label positions' logits are gathered and upcast to float32.
    ``ref_logits`` (same shape as ``logits``): the reference model's, for a loss that ``needs = "reference"``.
    """
    loss = make_loss(loss_cfg)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"compute_loss: expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    batch_size = logits.size(0)
    weights = torch.as_tensor(weights, device=logits.device).to(torch.float32).reshape(-1)
    if weights.numel() != batch_size:
        raise ValueError(f"compute_loss: {weights.numel()} weights for a batch of {batch_size}")
    labels = labels.to(logits.device)
    if not labels_shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
        ref_logits = None if ref_logits is None else ref_logits[:, :-1]
    mask = labels != IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0  # keeps the graph: backward works and changes nothing
    sample_idx, pos = mask.nonzero(as_tuple=True)
    ref = {} if ref_logits is None else {"ref_logits": ref_logits.to(logits.device)[sample_idx, pos].float()}
    return loss.batch_loss(
        logits[sample_idx, pos].float(), labels[sample_idx, pos], sample_idx, weights, batch_size, **ref
    )
