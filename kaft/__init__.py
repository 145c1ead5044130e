"""kaft — knowledge-aware fine-tuning: detect, partition and fine-tune around knowledge conflicts in SFT."""

__version__ = "0.1.0"


def _or_default(value, default):
    """``${kaft_default:${alpha},1.0}``: ``value`` unless it is null, else ``default``. Top-level ``alpha`` /
    ``beta`` default to null so that each loss falls back to its own paper's default (KaFT α = 0.1, β = 0.5;
    EAFT's exponent 1.0) while a value given on the command line reaches whichever loss runs."""
    return default if value is None else value


def _register_resolvers() -> None:
    """Registered on import of kaft (the CLI, the tests) and by kaft's Hydra plugin (bare ``hydra.compose``)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core, a dependency
        return
    from kaft.sweep.naming import config_hash, job_subdir

    OmegaConf.register_new_resolver("kaft_default", _or_default, replace=True)
    OmegaConf.register_new_resolver("kaft_subdir", job_subdir, replace=True)
    OmegaConf.register_new_resolver("kaft_hash", config_hash, replace=True)


_register_resolvers()
