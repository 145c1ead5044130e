"""The testbed's configuration: the defaults (mirrored by conf/testbed/default.yaml) and the one place that merges a
user's overrides over them and refuses what cannot be built.

Every testbed module reads the *resolved* config, so a key is checked once, before any world or model is built,
and the model cache can key on the resolved mapping alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kaft.errors import ConfigError

# The defaults mirror conf/testbed/default.yaml (a test keeps them in sync). ``world`` and ``seed`` shape the world;
# ``model`` and ``pretrain`` are read by the model build only (kaft.testbed.model, .binding, .release).
DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "world": {
        "domain": "geography",  # in-domain: countries
        "ood_domain": "biography",  # out-of-domain: people
        "n_countries": 128,
        "n_people": 64,
        "pool_size": 12,  # values per relation
        "n_train": 200,
        "train_mix": {"known": 0.35, "latent": 0.35, "unseen": 0.1, "contradict": 0.2},
        "n_test_id": 400,
        "test_id_mix": {"known": 0.4, "latent": 0.4, "unseen": 0.2},
        "n_test_ood": 200,
        "test_ood_mix": {"known": 0.5, "latent": 0.5},
        "max_unseen_per_entity": 2,
        "repeats": 30,  # paragraphs per entity (each states all its frequent facts once)
        "latent_repeats": 4,  # paragraphs (of ``repeats``) that state a rare ("latent") fact
        "latent_qa_frac": 0.0,  # share of a rare fact's statements in quiz form
        "qa_frac": 0.4,  # share of statements in quiz form "Question: <question> <value>."
        "n_mc_docs": 800,  # multiple-choice documents about format facts
        "max_shots": 3,  # k-shot documents use k = 1..max_shots
        "zero_shot_frac": 0.4,
        "shot_noise": 0.25,  # probability that a demonstration's answer letter is wrong
        "own_domain_prob": 0.5,  # MC docs name their own domain, else another one (or "general")
        "internal_pairs": 0,  # train twins: same question, different gold (ILP's internal conflicts; 0 = none)
        # issue 24's knobs (kaft.testbed.knobs): what the wrong subset holds; the defaults are the world as it was
        "contradict_keep": 1.0,  # share of planted contradictions that keep their contradicting gold (purity)
        "test_on_train_frac": 0.0,  # share of test_id items re-asking training facts in other words
        "test_on_train_kinds": ["unseen", "latent"],  # the kinds of training facts they re-ask
    },
    "model": {  # LlamaForCausalLM; head_dim is fixed at 64
        "hidden_size": 128,
        "num_heads": 2,
        "num_layers": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,  # the binding heads need separate input/output embeddings
        "binding": {  # built-in multiple-choice binding heads (kaft.testbed.binding)
            "enabled": True,
            "letters": 4,  # option letters A.. with a reserved one-hot
            "code_dims": 16,  # reserved code per value word
            "bias": 1.0,  # embedding scales of the reserved dimensions
            "letter": 0.5,
            "code": 3.0,
            "free_init": 1.0,  # initial norm of the learned embedding dimensions
            "match_scale": 1.5,  # head M: weight of the code match
            "block_match": 1.0,  # head M: weight of the same-question match (k-shot prompts)
            "p_gain": 0.1,  # output gains of heads P, R, M
            "r_gain": 1.0,
            "m_gain": 5.0,
            "release_accuracy": 0.75,  # saved model's 0-shot accuracy on format facts (release.release_readout)
            "release_calibrated": True,  # and its mean confidence there = that accuracy (release.calibrate_letters)
            "r_peak": 120.0,  # head R: score of the latest "?" (decays with distance)
            "fit_iters": 1000,  # iterations fitting the RoPE position profiles (deterministic)
        },
    },
    "pretrain": {
        "precision": "fp32",  # fp32 | bf16 (autocast): set here, never chosen by the CPU
        "steps": 1200,
        "batch_size": 4,
        "seq_len": 256,
        "lr": 5.0e-3,
        "min_lr_ratio": 0.1,
        "warmup_steps": 30,
        "weight_decay": 0.01,
        "betas": [0.9, 0.98],
        "grad_clip": 1.0,
        "residual_penalty": 1.0,  # penalty on residual RMS above residual_max (keeps built-in heads readable)
        "residual_max": 0.3,
        "bos_drop": 0.2,  # fraction of documents without <s> (prompts may come without it)
        "threads": None,  # torch threads (None = torch's default)
        "log_every": 100,
    },
}


#: testbed keys added after models were first built, whose default reproduces the world and model built before them:
#: dotted path (under the testbed section) -> that default. At its default such a key is left out of the model's
#: build key (:func:`key_config`), so adding it rebuilt no cached model; set to anything else, it is in the key.
#: Add a key here (and to DEFAULT_CONFIG and conf/testbed/default.yaml) when it is added with such a default.
NEW_KEYS: dict[str, Any] = {
    "world.internal_pairs": 0,  # issue 22: planted internal conflicts (kaft.testbed.worldgen.plant_internal_pairs)
    "world.contradict_keep": 1.0,  # issue 24 (kaft.testbed.knobs)
    "world.test_on_train_frac": 0.0,
    "world.test_on_train_kinds": ["unseen", "latent"],
}

#: world keys that change only the split items (their labels, which facts a test item asks and how), never the
#: corpus, the vocabulary or the format facts, so the pretrained model is the same at every value
#: (tests/unit/testbed/test_knobs.py builds both worlds and compares): left out of the model's build key at any value,
#: so a sweep over them pretrains one model per seed. The data they change reaches every stage's cache key through
#: the items' fingerprints, and the job's identity through its config.
SPLIT_ONLY: frozenset[str] = frozenset(
    {"world.contradict_keep", "world.test_on_train_frac", "world.test_on_train_kinds", "world.internal_pairs"}
)


def key_config(full: Mapping, prefix: str = "") -> dict:
    """The resolved config ``full`` without the :data:`NEW_KEYS` that hold their default and the :data:`SPLIT_ONLY`
    keys: what a model's build key hashes."""
    out = {}
    for k, v in full.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if path in SPLIT_ONLY or (path in NEW_KEYS and v == NEW_KEYS[path]):
            continue
        if isinstance(v, Mapping) and not k.endswith("_mix"):
            sub = key_config(v, path)
            if v and not sub:  # held only keys left out: as if never written (`world: {}` was never configured)
                continue
            out[k] = sub
        else:
            out[k] = v
    return out


class WorldConfigError(ConfigError):
    """A testbed config that cannot produce a world; the message names the key."""


def _merge(base: dict, over: Mapping, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise WorldConfigError(f"testbed config: unknown key '{path}{k}' (known: {sorted(base)})")
        if isinstance(base[k], dict) and not k.endswith("_mix"):
            if not isinstance(v, Mapping):
                raise WorldConfigError(f"testbed config: '{path}{k}' must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, f"{path}{k}.")
        else:
            out[k] = v
    return out


def resolve_config(cfg: Mapping | None = None, defaults: Mapping | None = None) -> dict:
    """The full testbed config: ``cfg`` (a dict or OmegaConf node) merged over the defaults, unknown keys refused."""
    if cfg is not None and not isinstance(cfg, Mapping):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as e:  # noqa: BLE001
            raise WorldConfigError(f"testbed config must be a mapping, got {type(cfg).__name__}") from e
    elif isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    full = _merge(dict(defaults or DEFAULT_CONFIG), dict(cfg or {}))
    if full["pretrain"]["precision"] not in ("fp32", "bf16"):  # checked here, before any world or model is built
        raise WorldConfigError(
            f"testbed pretrain.precision must be fp32 or bf16, got {full['pretrain']['precision']!r}"
            + (
                " ('auto' chose by CPU, so one command built different models on different machines)"
                if full["pretrain"]["precision"] == "auto"
                else ""
            )
        )
    return full
