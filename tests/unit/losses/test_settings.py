"""Loss configs checked before any model loads (kaft.losses.settings): every impossible value is a one-line
ConfigError naming the key; valid configs pass."""

from __future__ import annotations

import pytest
from helpers.losses import CONSTANT, KAFT

from kaft.errors import ConfigError
from kaft.losses import LOSSES, sample_weights, validate_loss_cfg


@pytest.mark.parametrize(
    "cfg,k,match",
    [
        ({**KAFT, "rewards": [0.1, 0.5, 1.0]}, 4, "3 entries.*K=4"),
        ({"name": "kaft", "alpha": 0.1, "beta": 0.5}, 3, "K=3.*rewards"),
        ({"name": "kaft", "alpha": 1.5, "beta": 0.5}, 4, "alpha.*\\[0, 1\\]"),
        ({"name": "kaft", "alpha": 0.1, "beta": -0.1}, 4, "beta"),
        ({"name": "kaft", "rewards": [0.1, -1, 1, 1]}, 4, "rewards\\[1\\]"),
        ({"name": "kaft", "alhpa": 0.1}, 4, "unknown key.*alhpa"),
        ({"name": "eaft", "eaft_alpha": 1.0, "top_k": 1}, 4, "'top_k'"),
        ({"name": "eaft", "eaft_alpha": -1.0}, 4, "eaft_alpha"),
        ({"name": "eaft", "alpha": 0.5}, 4, "loss eaft: .alpha. is now .eaft_alpha. \\(set loss.eaft_alpha"),
        ({"name": "focal"}, 4, "unknown loss 'focal'; choose one of"),
        ({}, 4, "unknown loss None"),
        ({"name": "eaft", "normalize": "ln20"}, 4, "'normalize' must be one of.*const3.*lnk.*none.*got 'ln20'"),
        ({"name": "eaft", "variant": "focal"}, 4, "'variant' must be one of.*masked.*power.*sigmoid.*got 'focal'"),
        ({"name": "eaft", "variant": "masked", "mask_quantile": 1.0}, 4, "mask_quantile.*\\[0, 1\\)"),
        ({"name": "eaft", "top_k": 2.5}, 4, "'top_k'.*integer"),
        ({"name": "kaft", "top_k": 20}, 4, "unknown key.*'top_k'.*eaft.*use loss=kaft_eaft"),
        ({"name": "eaft", "beta": 0.5}, 4, "unknown key.*'beta'.*use loss=kaft_eaft"),
        ({"name": "constant", "variant": "power"}, 4, "unknown key.*'variant'.*set loss.name"),
        ({"name": "kaft_eaft", "alpha": 2.0}, 4, "alpha.*\\[0, 1\\]"),
        ({"name": "kaft_eaft", "rewards": [1, 1]}, 4, "2 entries.*K=4"),
        ({"name": "kaft_eaft", "eaft_alpha": -1}, 4, "eaft_alpha"),
        ({"name": "dft", "alpha": 1.0}, 4, "loss dft: unknown key.*alpha"),
        ({"name": "dpo", "dpo_beta": 0.0}, 4, "dpo_beta.*> 0"),
        (
            {"name": "dpo", "pairs": "self_other"},
            4,
            "'pairs' must be one of.*dataset_self.*self_self.*got 'self_other'",
        ),
        ({"name": "dpo", "max_pairs": 0}, 4, "max_pairs"),
        ({"name": "dpo", "weight_by_subset": "yes"}, 4, "weight_by_subset.*true or false"),
        ({"name": "dpo", "weight_by_subset": True}, 3, "K=3.*rewards"),
        ({"name": "dpo", "alpha": 1.5}, 4, "alpha.*\\[0, 1\\]"),
    ],
)
def test_impossible_configs_raise(cfg, k, match):
    with pytest.raises(ConfigError, match=match):  # a user error: one `kaft: error:` line
        validate_loss_cfg(cfg, k)
    with pytest.raises(ConfigError, match=match):
        sample_weights(cfg, [0], [0.5], k)


@pytest.mark.parametrize("name", LOSSES.names())
def test_unknown_loss_lists_every_registered_loss(name):
    with pytest.raises(ConfigError, match="unknown loss 'focal'") as err:
        validate_loss_cfg({"name": "focal"}, 4)
    assert repr(name) in str(err.value)


def test_valid_configs_pass():
    for cfg in (
        CONSTANT,
        KAFT,
        {"name": "auto_adapt"},
        {"name": "eaft", "eaft_alpha": 1.0, "top_k": 20},
        {"name": "dft"},
        {"name": "eaft", "eaft_alpha": 0.5, "top_k": 5, "normalize": "none", "variant": "masked", "mask_quantile": 0.3},
        {
            "name": "kaft_eaft",
            "alpha": 0.1,
            "beta": 0.5,
            "rewards": None,
            "eaft_alpha": 1.0,
            "top_k": 20,
            "normalize": "lnk",
            "variant": "sigmoid",
            "mask_quantile": 0.15,
        },
        {
            "name": "dpo",
            "dpo_beta": 0.5,
            "pairs": "self_self",
            "max_pairs": 2,
            "weight_by_subset": False,
            "alpha": 0.1,
            "beta": 0.5,
            "rewards": None,
        },
    ):
        validate_loss_cfg(cfg, 4)
    validate_loss_cfg({"name": "dpo", "weight_by_subset": False}, 3)  # rewards unused: any K
