"""Makes the repository's ``sweeps/`` folder a Hydra config group, so ``python -m kaft.run -m +sweeps=mission``
runs a sweep file. Hydra discovers this plugin through the ``hydra_plugins`` namespace package. Importing kaft
registers its config resolvers (kaft.resolvers), so conf/ composes with plain Hydra too."""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import kaft.resolvers  # noqa: F401  (registers the resolvers conf/ uses: kaft_default, kaft_subdir, kaft_hash)

ROOT = Path(__file__).resolve().parents[2]


class KaftSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (ROOT / "sweeps").is_dir() and (ROOT / "kaft").is_dir():
            search_path.append(provider="kaft-sweeps", path=f"file://{ROOT}")
