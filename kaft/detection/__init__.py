"""Stage 2 — detect: score how much each training item conflicts with what the model already knows.

Layers, each importing only those above it:

* :mod:`~kaft.detection.core` — queries (option orders, k-shot demonstrations), answer parsing, Score, the option
  letters' token ids, records I/O;
* :mod:`~kaft.detection.backends` — the backend registry and interface; :mod:`~kaft.detection.hf_backend` (an
  in-process transformers model) and :mod:`~kaft.detection.vllm_backend` (a vLLM engine) register in it;
* :mod:`~kaft.detection.settings` — typed settings (one source of defaults and checks);
* :mod:`~kaft.detection.probing` — the chunked, resumable probe loop driven by what a detector declares;
* :mod:`~kaft.detection.detectors` — the detector registry with ``diversified`` and ``icl``;
  :mod:`~kaft.detection.convert` adds ``mc_conversion`` (free-form items to multiple choice);
  :mod:`~kaft.detection.generative` adds ``generative`` (free-form responses judged by the job's verifier);
* :mod:`~kaft.detection.api` — the config-level entry points below; :mod:`~kaft.detection.responses` — SMA's
  sampling for DPO pairs and free-form sampling (:func:`sample_freeform`).
"""

from kaft.detection.api import (
    detector_for,
    greedy_probe,
    holds_greedy,
    make_backend,
    reads_verifier,
    run_detection,
    saves_samples,
    settings,
    validate,
)
from kaft.detection.backends import BACKENDS
from kaft.detection.convert import CONVERSION_KEYS, FreeFormItem, load_freeform, normalize_freeform, to_multiple_choice
from kaft.detection.core import (
    ORDER_SCHEMES,
    DetectionError,
    Query,
    build_queries,
    choose_shots,
    letter_token_ids,
    majority,
    option_orders,
    parse_answer,
    read_records,
    score,
    seeded_rng,
    to_original,
    write_records,
)
from kaft.detection.detectors import DETECTORS, ICL, Detector, Diversified
from kaft.detection.generative import Generative, GenerativeSettings
from kaft.detection.hf_backend import HFBackend, filter_logits
from kaft.detection.probing import Layout, Need, probe, probe_chunk
from kaft.detection.responses import sample_freeform, sample_prompts, sample_responses
from kaft.detection.settings import ESTIMATORS, ProbeSettings
from kaft.detection.vllm_backend import VLLMBackend

__all__ = [
    "BACKENDS",
    "CONVERSION_KEYS",
    "DETECTORS",
    "ESTIMATORS",
    "ICL",
    "ORDER_SCHEMES",
    "DetectionError",
    "Detector",
    "Diversified",
    "FreeFormItem",
    "Generative",
    "GenerativeSettings",
    "HFBackend",
    "Layout",
    "Need",
    "ProbeSettings",
    "Query",
    "VLLMBackend",
    "build_queries",
    "choose_shots",
    "detector_for",
    "filter_logits",
    "greedy_probe",
    "holds_greedy",
    "letter_token_ids",
    "load_freeform",
    "majority",
    "make_backend",
    "normalize_freeform",
    "option_orders",
    "parse_answer",
    "probe",
    "probe_chunk",
    "read_records",
    "reads_verifier",
    "run_detection",
    "sample_freeform",
    "sample_prompts",
    "sample_responses",
    "saves_samples",
    "score",
    "seeded_rng",
    "settings",
    "to_multiple_choice",
    "to_original",
    "validate",
    "write_records",
]
