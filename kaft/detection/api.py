"""Detection from a config mapping (``cfg.detection``): the entry points the pipeline calls.

The detector named by ``name`` (default ``diversified``) owns the settings' schema, so every function here looks
it up in :data:`~kaft.detection.detectors.DETECTORS` and asks it; none knows a method by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kaft.detection.convert  # noqa: F401  (registers detection=mc_conversion)
import kaft.detection.generative  # noqa: F401  (registers detection=generative)
from kaft.detection.backends import BACKENDS
from kaft.detection.detectors import DETECTORS, Detector
from kaft.detection.settings import ProbeSettings


def _detector_class(cfg: Mapping) -> type[Detector]:
    return DETECTORS.get(dict(cfg).get("name", ProbeSettings.name))


def settings(cfg: Mapping) -> dict:
    """``cfg`` over its detector's defaults, values as given (part of the detect cache key); an unknown key is a
    one-line :class:`~kaft.detection.core.DetectionError`."""
    return _detector_class(cfg).Settings.resolve(cfg)


def detector_for(cfg: Mapping) -> Detector:
    """The detector of ``cfg`` bound to its typed, checked settings."""
    cls = _detector_class(cfg)
    return cls(cls.Settings.parse(cls.Settings.resolve(cfg)))


def validate(cfg: Mapping) -> None:
    detector_for(cfg)


def saves_samples(cfg: Mapping) -> bool:
    """Whether the records carry sampled answers (what self-align and DPO pairs are built from)."""
    return detector_for(cfg).saves_samples()


def holds_greedy(cfg: Mapping) -> bool:
    """Whether every record holds the model's greedy answer to the original option order."""
    return detector_for(cfg).holds_greedy()


def greedy_probe(cfg: Mapping) -> dict:
    """The detection settings of the probe for each item's greedy answer to the original order (KaFT §2.2's r_i)
    when ``cfg``'s records lack it: one exact forward pass per item, original order only, with ``cfg``'s prompt,
    shots and model settings (part of that probe's cache key)."""
    det = {
        **settings(cfg),
        "name": "diversified",
        "estimator": "exact",
        "diverse_query": False,
        "response_sampling": True,
    }
    return {k: v for k, v in det.items() if k in ProbeSettings.keys()}  # a detector's own keys (CONVERSION_KEYS, ...)


def make_backend(
    cfg: Mapping, model_loader: Callable[[], tuple[Any, Any]], model_path: str | None = None, seed: int = 0
):
    """The probing backend of ``detection.backend`` (:data:`~kaft.detection.backends.BACKENDS`): ``model_loader()``
    gives the in-memory model and tokenizer to backends that use them; ``model_path`` is the directory or hub id
    for those that start an engine of their own."""
    s = settings(cfg)
    return BACKENDS.get(s["backend"]).from_settings(s, model_loader, model_path, seed)


def reads_verifier(cfg: Mapping) -> bool:
    """Whether the detector of ``cfg`` judges responses with the job's verifier (generative detection)."""
    return _detector_class(cfg).reads_verifier


def run_detection(
    backend,
    items,
    cfg: Mapping,
    seed: int,
    domain: str,
    instruction=None,
    progress: bool = True,
    work_dir=None,
    verifier=None,
) -> list[dict]:
    """One record per item (in item order) by the detector of ``cfg``; ``work_dir`` makes the probing resumable;
    ``verifier`` (a :class:`kaft.verifiers.Verifier`) judges the responses of a detector that :func:`reads_verifier`."""
    det = detector_for(cfg)
    if det.reads_verifier:
        det.verifier = verifier
    return det.run(backend, items, seed, domain, instruction, progress, work_dir)
