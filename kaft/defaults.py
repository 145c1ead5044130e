"""Config keys added with a default that reproduces what kaft did before them (:data:`NEW_DEFAULTS`).

Why a module of its own: the identity (:mod:`kaft.identity`, which re-exports both names) and the stages' cache keys
(:mod:`kaft.stages`) both leave such a key out while it holds its default, and neither may import the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: config keys added after results were first recorded, whose default reproduces what kaft did before them: dotted
#: path -> that default. At its default such a key is left out of the identity's config part (and the stages leave
#: it out of their cache keys, :func:`without_new_defaults`), so adding it changed no default job's identity or
#: artifacts; set to anything else, it is in both. Add a key here when it is added with such a default.
NEW_DEFAULTS: dict[str, Any] = {
    "train.target": "auto",  # kaft.targets: auto = letter on multiple-choice data, what kaft always trained on
    "train.response_eos": False,  # only a response target ends in EOS, and only when asked
    "train.context": False,  # kaft.trainset.contextualize: Ren et al.'s contextualized IFT, only when asked
    "train.finetune": "lora",  # kaft.train.full: every job trained a LoRA adapter before train=full existed
    "train.reference": "auto",  # full fine-tuning's reference (auto: precomputed for dpo, copy for sft_kl)
    "train.distributed": "none",  # kaft.train.distributed: one process, as every job ran before torchrun
    "verifier": {"name": "exact"},  # kaft.verifiers: read only by generative detection / evaluation and SMA's DPO
    # kaft.diagnosis (conf/diagnosis/default.yaml): off, the job runs no diagnosis stage (the whole group at its
    # defaults is left out; tests/unit/diagnosis/test_keys.py keeps this copy equal to the schema's defaults)
    "diagnosis": {
        "enabled": False,
        "n_runs": 5,
        "tau": 0.5,
        "tau_c": 0.8,
        "temperature": 0.7,
        "icl_shots": 5,
        "batch_size": 16,
        "causes": None,
    },
    "testbed.world.internal_pairs": 0,  # kaft.testbed: planted internal conflicts (issue 22); 0 = the world as before
    # the testbed world's issue-24 knobs (kaft/testbed/knobs.py): at these defaults the world is as it always was
    "testbed.world.contradict_keep": 1.0,
    "testbed.world.test_on_train_frac": 0.0,
    "testbed.world.test_on_train_kinds": ["unseen", "latent"],
}


def without_new_defaults(section: Mapping, prefix: str = "") -> dict:
    """``section`` (the config at dotted path ``prefix``; "" = the whole config) without the :data:`NEW_DEFAULTS`
    keys under it that hold their default (nested mappings copied, the rest as is; a mapping that held only such keys
    left out too, so ``testbed: {world: {<new key>: <default>}}`` reads as no ``world`` at all)."""
    out = {}
    for k, v in section.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if path in NEW_DEFAULTS and v == NEW_DEFAULTS[path]:
            continue
        sub = without_new_defaults(v, path) if isinstance(v, Mapping) else v
        if isinstance(v, Mapping) and v and not sub:  # held only such keys: as if never written
            continue
        out[k] = sub
    return out
