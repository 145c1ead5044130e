"""The config resolvers conf/ uses, registered on import (by kaft.run, kaft.sweep.plan and kaft's Hydra plugin, so
conf/ also composes with plain ``hydra.compose``)."""

from __future__ import annotations

from omegaconf import OmegaConf

from kaft.sweep.naming import config_hash, job_subdir


def or_default(value, default):
    """``${kaft_default:${alpha},1.0}``: ``value`` unless it is null, else ``default``. Top-level ``alpha`` /
    ``beta`` default to null so that each loss falls back to its own paper's default (KaFT α = 0.1, β = 0.5;
    EAFT's exponent 1.0) while a value given on the command line reaches whichever loss runs."""
    return default if value is None else value


OmegaConf.register_new_resolver("kaft_default", or_default, replace=True)
OmegaConf.register_new_resolver("kaft_subdir", job_subdir, replace=True)  # a sweep job's run dir name
OmegaConf.register_new_resolver("kaft_hash", config_hash, replace=True)
