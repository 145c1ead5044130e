"""kaft.train.distributed without torchrun: the checks of ``train.distributed`` against the launch, the train key's
``ranks`` (only under ddp), and a rank > 0's cache view, which waits for rank 0's artifact and never builds."""

from __future__ import annotations

import threading
import time

import pytest

from kaft.cache import Cache
from kaft.train import TrainError, key_settings
from kaft.train import distributed as dist_mod


def test_launch_and_setting_must_agree(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="add train.distributed=ddp"):
        dist_mod.setup({"distributed": "none"})
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(TrainError, match="torchrun --nproc-per-node N"):
        dist_mod.setup({"distributed": "ddp"})
    assert dist_mod.setup({}) is False and not dist_mod.active() and dist_mod.is_main()


def test_ranks_enter_the_train_key_only_under_ddp():
    cfg = {"lr": 1e-4, "lora": {"r": 4}}
    assert key_settings(cfg, "weights", 2) == cfg  # a one-process LoRA job: as it was
    assert key_settings({**cfg, "distributed": "ddp"}, "weights", 2)["ranks"] == 2


def test_a_follower_waits_for_rank_0_and_never_builds(tmp_path):
    cache = Cache(tmp_path)
    follower = dist_mod.FollowerCache(cache)

    def rank0():
        time.sleep(0.5)
        cache.get_or_create("detect", "k", lambda tmp: (tmp / "x.json").write_text("1"))

    thread = threading.Thread(target=rank0)
    thread.start()
    hit = follower.get_or_create("detect", "k", lambda tmp: pytest.fail("a follower built"))
    thread.join()
    assert hit.cached and (hit.path / "x.json").read_text() == "1"
    assert follower.path("detect", "k") == cache.path("detect", "k")  # the rest is the cache's own
