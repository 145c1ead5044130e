"""The testbed as a kaft plugin (``kaft.plugins`` entry point ``testbed``): what a job config names, registered on
import.

* data source ``testbed``: ``{source: testbed, split: train | test_id | test_ood}`` reads a split of the world of the
  job's ``testbed`` config; ``response: sentence | sentence+evidence`` gives each row a free-form response built from
  the world's templates (:mod:`kaft.testbed.sentences`; default ``answer``: the rows as they always were);
* model source ``testbed``: the model pretrained on that world (built on first use, cached), and its preview (the
  tokenizer and context length, without building it: what kaft.plausibility measures prompts with);
* ground truth ``testbed``: the cause each training item was planted with (:mod:`kaft.testbed.planted`), for the
  attribution's precision / recall (:mod:`kaft.diagnosis.causes`); ``None`` for items without kinds;
* diagnostic ``testbed``: how well detection finds the contradicting items the world planted (items whose ``meta``
  names a ``kind``); ``{}`` for items without kinds.

kaft itself never imports this package: the registries import this module when a config names what it registers.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Mapping, Sequence

from kaft import data, modeling
from kaft.cache import make_key
from kaft.diagnosis.causes import GROUND_TRUTH
from kaft.diagnostics import DIAGNOSTICS
from kaft.items import MCItem
from kaft.results import auroc
from kaft.testbed.config import key_config, resolve_config
from kaft.testbed.model import VERSION, build_model
from kaft.testbed.planted import planted_causes
from kaft.testbed.sentences import check_context, check_response, with_context, with_response
from kaft.testbed.tokenizer import build_tokenizer
from kaft.testbed.world import build_world


@data.SOURCES.register("testbed")
def read_split(split: str, config: Mapping, response: str = "answer", context: str = "none", **_) -> Iterator[Mapping]:
    """Rows of one split of the world of the job config's ``testbed`` section, with ``response`` sentences and, with
    ``context: evidence``, each fact's evidence sentence as ``meta["context"]`` (Ren et al. Exp-II)."""
    check_response(response)
    check_context(context)
    world = build_world(config.get("testbed"))
    for it in world.split(split):
        yield with_context(with_response(it.to_dict(), world.relations, response), world.relations, context)


@modeling.SOURCES.register("testbed")
def resolve_model(model_cfg: Mapping, cache_root: str, config: Mapping, build: bool = True) -> tuple[str, str]:
    """The testbed model's directory (built on first use; "" with ``build=False``) and identity: the ``testbed``
    section as configured (not as resolved; :data:`~kaft.testbed.config.NEW_KEYS` at their default left out) and the
    build's code version, so the key of every model built so far stays what it was."""
    testbed = config.get("testbed") or {}
    return (str(build_model(testbed, cache_root)) if build else ""), make_key("testbed", key_config(testbed), VERSION)


@modeling.PREVIEWS.register("testbed")
def preview_model(model_cfg: Mapping, config: Mapping) -> tuple[object, int]:
    """The tokenizer and context length of the model ``resolve_model`` would build, without building it: the
    tokenizer is a function of the world (memoised, the data stage built it) and the context is configured."""
    full = resolve_config(config.get("testbed"))
    n = int(full["model"]["max_position_embeddings"])
    return build_tokenizer(build_world(full), n), n


class ContradictionDiagnostic:
    """Detection against the truth the world knows: the mean score by kind of fact, the AUROC of a low score for the
    ``contradict`` items, the share of them that the lowest-scoring subset holds (recall) and the share of that
    subset's items that are contradictions (precision; None for an empty subset)."""

    def compute(self, scores: Sequence[float], items: Sequence[MCItem], subsets: Sequence[int]) -> dict:
        kinds = sorted({it.meta.get("kind") for it in items if it.meta.get("kind")})
        if not kinds:
            return {}
        out: dict = {
            "mean_by_kind": {
                k: statistics.fmean([s for s, it in zip(scores, items) if it.meta.get("kind") == k]) for k in kinds
            }
        }
        if "contradict" in kinds:
            pos = [s for s, it in zip(scores, items) if it.meta.get("kind") == "contradict"]
            neg = [s for s, it in zip(scores, items) if it.meta.get("kind") != "contradict"]
            out["auroc_contradict"] = auroc(pos, neg)
            hits = sum(1 for it, g in zip(items, subsets) if it.meta.get("kind") == "contradict" and g == 0)
            out["contradict_in_lowest_subset"] = hits / max(1, len(pos))
            lowest = sum(1 for g in subsets if g == 0)  # its precision: how many of its items are contradictions
            out["lowest_subset_precision"] = hits / lowest if lowest else None
        return out

    def headline(self, detection: dict) -> str:
        text = f"  auroc(contradict)={detection['auroc_contradict']:.3f}" if "auroc_contradict" in detection else ""
        if "contradict_in_lowest_subset" in detection:
            text += f"  contradict in lowest subset={detection['contradict_in_lowest_subset']:.3f}"
        if detection.get("lowest_subset_precision") is not None:
            text += f"  its precision={detection['lowest_subset_precision']:.3f}"
        return text


DIAGNOSTICS.register("testbed", ContradictionDiagnostic())


@GROUND_TRUTH.register("testbed")
def testbed_truth(items: Sequence) -> list | None:
    """The planted causes of testbed items (items whose ``meta`` names a ``kind``), else ``None``."""
    metas = [it.get("meta") if isinstance(it, Mapping) else getattr(it, "meta", None) for it in items]
    if not items or not all(isinstance(m, Mapping) and m.get("kind") for m in metas):
        return None
    return planted_causes(items)
