"""Probing backends (``detection.backend``): what serves a detector's forward passes and generations.

Every backend class registers itself in :data:`BACKENDS` and offers the same interface, so detectors and the
probe loop never ask which one runs:

* ``letter_probs(prompts, letter_ids, T)`` — per prompt, p_T(next token ∈ letter_ids[j]) under softmax(logits / T)
  over the full vocabulary (what the exact estimator and ICL read);
* ``greedy_first_tokens(prompts)`` — the argmax next token per prompt;
* ``sample(prompts, n, T, max_new_tokens, seed, top_k=0, top_p=1)`` — ``n`` decoded continuations per prompt;
* ``tokenizer`` (the HF tokenizer: letter token ids come from it) and an optional ``close()``;
* ``from_settings(settings, model_loader, model_path, seed)`` — the backend a detection config asks for.
"""

from __future__ import annotations

from kaft.detection.core import DetectionError
from kaft.registry import Registry

BACKENDS: Registry = Registry("detection backend", DetectionError)
