"""Stage 4 — training objectives: per-sample rewards (KaFT), per-token weights (EAFT, DFT), preference pairs (DPO).

The losses differ only in *where* the down-weighting of conflicting data happens — per sample from the detection
stage (:mod:`~kaft.losses.weighted`: ``constant``, ``kaft``, ``auto_adapt``), per token from the model's own
confidence (:mod:`~kaft.losses.token`: ``eaft``, ``dft``), both (``kaft_eaft``), or by turning the model's own
wrong answers into rejected responses (:mod:`~kaft.losses.preference`: ``dpo``, pairs from
:mod:`~kaft.losses.pairs` for answer letters and :mod:`~kaft.losses.response_pairs` for free-form responses, SMA
Table 5's data sources); EAFT's baseline SFT_KL penalises the KL to the base model (:mod:`~kaft.losses.kl`:
``sft_kl``) and ``sft_self`` trains on the model's own correct answers (:mod:`~kaft.losses.self_sft`). Each is a :class:`Loss` in the :data:`LOSSES` registry that declares its table
``label``, the hyperparameters it ``reads``, what it ``needs`` ("weights" or "pairs"), whether it needs sampled
answers, and a typed settings dataclass (:mod:`~kaft.losses.settings`); the functions below read those
declarations, so adding a loss is one class in one file. Every half is a pure function on plain numbers or
tensors, checked against its closed form in ``tests/unit/losses/ (test_token.py, test_base.py)``.

One config names one loss: combinations are losses of their own (``kaft_eaft``), never implied by extra keys, and
a key of another loss is an error that names the combination to use.

Label convention (the Hugging Face causal-LM one): ``labels`` is aligned with ``input_ids`` — ``labels[b, t]`` is
the token *at* position ``t`` (``-100`` = no loss) — and is shifted here: ``logits[:, t]`` is scored against
``labels[:, t + 1]``. Pass ``labels_shifted=True`` when ``logits[:, t]`` already pairs with ``labels[:, t]`` (the
trainer does, after keeping only the label positions' logits).

Under gradient accumulation every micro-batch is reduced on its own and the trainer divides by the number of
micro-batches (for EAFT LLaMA-Factory divides by the label tokens of the whole accumulated batch instead; the two
agree whenever micro-batches hold equally many label tokens, e.g. one answer token per sample).
"""

from kaft.losses.base import (
    IGNORE_INDEX,
    LOSSES,
    Loss,
    compute_loss,
    get_loss,
    is_pairwise,
    key_config,
    make_loss,
    needs_samples,
    sample_weights,
    sma_sampling,
    validate_loss_cfg,
)
from kaft.losses.kl import SFTKL, sft_kl_loss, token_kl
from kaft.losses.preference import (
    DPO,
    SMA_SAMPLING,
    PreferenceLoss,
    chosen_nll,
    dpo_loss,
    dpo_pair_loss,
    sequence_logps,
)
from kaft.losses.self_sft import SFTSelf
from kaft.losses.settings import LossError
from kaft.losses.token import (
    DFT,
    EAFT,
    EAFT_NORMALIZERS,
    EAFT_VARIANTS,
    KaFTEAFT,
    TokenWeighted,
    dft_token_weights,
    eaft_token_weights,
    topk_entropy,
)
from kaft.losses.weighted import AutoAdapt, Constant, KaFT, kaft_rewards

__all__ = [
    "AutoAdapt",
    "Constant",
    "DFT",
    "DPO",
    "EAFT",
    "EAFT_NORMALIZERS",
    "EAFT_VARIANTS",
    "IGNORE_INDEX",
    "KaFT",
    "KaFTEAFT",
    "LOSSES",
    "Loss",
    "LossError",
    "PreferenceLoss",
    "SFTKL",
    "SFTSelf",
    "SMA_SAMPLING",
    "TokenWeighted",
    "chosen_nll",
    "compute_loss",
    "dft_token_weights",
    "dpo_loss",
    "dpo_pair_loss",
    "eaft_token_weights",
    "get_loss",
    "is_pairwise",
    "kaft_rewards",
    "key_config",
    "make_loss",
    "needs_samples",
    "sample_weights",
    "sequence_logps",
    "sft_kl_loss",
    "sma_sampling",
    "token_kl",
    "topk_entropy",
    "validate_loss_cfg",
]
