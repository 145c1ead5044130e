"""Per-item signals of the post-training diagnosis: pure functions of answer distributions and sampled runs.

ILP ("Why Supervised Fine-Tuning Fails to Learn", seeds/002): after SFT the tuned model re-answers its own training
set through the multiple-choice interface (§3.1.2, Eq. 1: correct when the argmax option is gold); per item a
**pass@N rate** over N independent runs, a **Best-of-N** prediction (the run with the highest confidence) and the
**unlearned** flag, pass@N below τ under BoN-N (§3.1.3); for the base model **K(x)** = 1[zero-shot answer correct]
(Eq. 2), **JS(P_base ‖ P_sft)** over the options (Eq. 3) and the **high-confidence error**: the base model prefers
a wrong answer with a confidence (its probability of the predicted answer token) above τ_c (Eq. 6).

Ren et al. ("Learning or Self-aligning?", seeds/001) Exp-IV: per item the correlation of the option **ranking** of
the base model under ICL probing with that of the tuned model zero-shot. Ren §7 says "the Pearson correlation
coefficient between the ranking of ... predictions on choices": the Pearson coefficient of the two rank vectors,
i.e. Spearman's ρ (ties get their average rank) -- kaft's reading. Table 4: **KL(tuned zero-shot ‖ base ICL)**.

Distributions are lists of per-option probabilities (any non-negative mass; the divergences and rankings normalise
them over the options). Logarithms are natural (nats): JS then lies in [0, ln 2]; the extraction lost ILP's base.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

#: what an item's option distribution is smoothed with before a KL (a zero in the second argument is otherwise
#: infinite; Ren Table 4 reports finite values)
KL_EPS = 1e-8


def normalize(p: Sequence[float]) -> list[float]:
    """``p`` scaled to sum to 1 over the options (uniform when it has no mass)."""
    total = float(sum(p))
    if total <= 0:
        return [1.0 / len(p)] * len(p)
    return [float(x) / total for x in p]


def argmax(p: Sequence[float]) -> int:
    """The most probable option (the lowest index on ties): Eq. 1's prediction."""
    return max(range(len(p)), key=lambda a: (p[a], -a))


def kl_divergence(p: Sequence[float], q: Sequence[float], eps: float = KL_EPS) -> float:
    """KL(p ‖ q) in nats over the options, both normalised; ``q`` smoothed by ``eps`` (then renormalised)."""
    p, q = normalize(p), normalize([x + eps for x in q])
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """ILP Eq. 3: JS(P ‖ Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M), M = ½ (P + Q); in nats, in [0, ln 2]."""
    p, q = normalize(p), normalize(q)
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log(a / c) for a, c in zip(x, m) if a > 0)

    return 0.5 * kl(p) + 0.5 * kl(q)


def ranks(values: Sequence[float]) -> list[float]:
    """Rank of each value, 1 = largest, ties sharing their average rank."""
    from scipy.stats import rankdata  # lazy: only the diagnosis ranks

    return [float(r) for r in rankdata([-v for v in values])]


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None when either side is constant (no ranking to compare)."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def rank_consistency(base_icl: Sequence[float], tuned: Sequence[float]) -> float | None:
    """Ren Exp-IV: the Pearson correlation of the two option rankings (= Spearman's ρ of the distributions)."""
    return pearson(ranks(base_icl), ranks(tuned))


def sample_runs(dist: Sequence[float], n: int, rng: random.Random) -> list[int]:
    """``n`` independent answers drawn from ``dist`` (per-option probabilities of the answer token; the mass left
    of 1 is a response that names no option: answer -1, a wrong run)."""
    cum, total = [], 0.0
    for x in dist:
        total += float(x)
        cum.append(total)
    out = []
    for _ in range(n):
        u = rng.random()
        out.append(next((a for a, c in enumerate(cum) if u < c), -1))
    return out


def pass_rate(runs: Sequence[int], gold: int) -> float:
    """ILP §3.1.3: the fraction of runs in which the model predicts the correct option."""
    return sum(a == gold for a in runs) / len(runs)


def best_of_n(runs: Sequence[int], confidences: Sequence[float]) -> int:
    """ILP §3.1.3's Best-of-N: the prediction of the run with the highest confidence (the first on ties)."""
    best = max(range(len(runs)), key=lambda i: (confidences[i], -i))
    return runs[best]


def unlearned(rate: float, tau: float) -> bool:
    """ILP §3.1.3: an item is unlearned when its pass@N rate falls below τ."""
    return rate < tau


def knows(base_pred: int, gold: int) -> bool:
    """ILP Eq. 2: K(x) = 1[the base model's zero-shot answer is correct]."""
    return base_pred == gold


def high_conf_error(pred: int, conf: float, gold: int, tau_c: float) -> bool:
    """ILP Eq. 6: the base model prefers a wrong answer, its probability of that answer token above τ_c."""
    return pred != gold and conf > tau_c
