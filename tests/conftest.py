"""Shared test setup: everything offline, and the fixtures. The factories live in tests/helpers (``from helpers
import ...``): a second conftest.py (tests/unit/train) would shadow a ``from conftest import``."""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker per core (-n auto): torch's threads and the jobs' subprocesses
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # keep to it, else two workers run four threads on two cores
    os.environ.setdefault("MKL_NUM_THREADS", "1")  # (measured: the AVX2 build took 3.5x longer, the run no faster)

import pytest
from helpers import make_model, make_tokenizer, save_tiny_model, tiny_job_args, tiny_train_rows, write_tiny_job  # noqa: F401

#: tiers that need what a laptop or CI box lacks: they run only when ``-m`` names them (``pytest -m slurm``)
HARDWARE_TIERS = ("gpu", "vllm", "slurm")


def pytest_collection_modifyitems(config, items):
    """Deselect the hardware tiers unless the ``-m`` expression names them, so that any other selection
    (``pytest -m "not slow"``, the quick loop) keeps them out as plain ``pytest`` does, with no need to repeat
    ``and not gpu and not vllm and not slurm`` (a command-line ``-m`` replaces the one in addopts)."""
    expr = config.getoption("markexpr") or ""
    tiers = [t for t in HARDWARE_TIERS if not re.search(rf"\b{t}\b", expr)]
    out = [it for it in items if any(it.get_closest_marker(t) for t in tiers)]
    if out:
        config.hook.pytest_deselected(items=out)
        items[:] = [it for it in items if not any(it.get_closest_marker(t) for t in tiers)]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg's addopts): one worker per core this process may use, at most 4 — each worker imports
    torch and transformers (~0.5 GiB), and beyond 4 the slowest files, not the worker count, set the wall time."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core box they only contend (``usefixtures`` it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return make_model(len(tiny_tokenizer))


@pytest.fixture()
def mc_items():
    from kaft.data import MCItem

    colors = ["red", "green", "blue", "yellow"]
    animals = ["cat", "dog", "fox", "owl"]
    items = []
    for i in range(8):
        opts = colors if i % 2 == 0 else animals
        items.append(
            MCItem(
                id=f"q{i}",
                question=f"What is the capital of Zorvia {i} ?",
                options=list(opts),
                answer=i % 4,
                domain="geography",
            )
        )
    return items
