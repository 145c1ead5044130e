"""The diagnosis' per-item signals as columns of ``python -m kaft.export`` (:mod:`kaft.export`): a job run with
``diagnosis.enabled=true`` exports each training item's row of results.json's ``diagnosis.items`` beside its
conflict Score; every other job (and an item the strategy did not train on) exports them as null."""

from __future__ import annotations

from collections.abc import Mapping

#: export column -> (key of the diagnosis row, type: float | int | bool, what it holds)
EXPORT_COLUMNS: dict[str, tuple[str, str, str]] = {
    "diag_pass_rate": ("pass_rate", "float", "ILP §3.1.3: the tuned model's pass@N rate over N sampled runs"),
    "diag_bon_pred": ("bon_pred", "int", "ILP §3.1.3: the Best-of-N prediction (highest-confidence run)"),
    "diag_unlearned": ("unlearned", "bool", "ILP §3.1.3: pass@N below diagnosis.tau"),
    "diag_train_correct": ("train_correct", "bool", "the tuned model's greedy zero-shot answer is gold (Eq. 1)"),
    "diag_base_correct": ("base_correct", "bool", "ILP Eq. 2: K(x), the base model's zero-shot answer is gold"),
    "diag_base_conf": ("base_conf", "float", "the base model's probability of its predicted answer token"),
    "diag_base_high_conf_error": ("base_high_conf_error", "bool", "ILP Eq. 6: base prefers a wrong answer > tau_c"),
    "diag_js": ("js", "float", "ILP Eq. 3: JS(P_base || P_sft) over the options (nats)"),
    "ren_consistency": ("ren_consistency", "float", "Ren Exp-IV: rank correlation, base ICL vs tuned zero-shot"),
    "ren_kl": ("ren_kl", "float", "Ren Table 4: KL(tuned zero-shot || base ICL) over the options (nats)"),
    "diag_cause": ("cause", "str", "ILP §3.2: the first of the five causes whose test an unlearned item meets"),
}


def by_id(results: Mapping) -> dict[str, dict]:
    """The diagnosis rows of a results.json by item id ({} when the job ran no diagnosis)."""
    block = results.get("diagnosis") or {}
    return {r["id"]: r for r in block.get("items") or [] if "id" in r}


def values(row: Mapping | None) -> dict:
    """One export row's diagnosis columns (all null without a diagnosis row)."""
    return {col: (row or {}).get(key) for col, (key, _, _) in EXPORT_COLUMNS.items()}
