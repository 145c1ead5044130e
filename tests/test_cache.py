"""The content-addressed cache: atomic artifacts, keys that track their inputs, one builder under concurrency."""

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from kaft.cache import Cache, atomic_write_json, make_key


def test_keys_are_stable_and_sensitive():
    assert make_key({"a": 1, "b": [1, 2]}) == make_key({"b": [1, 2], "a": 1.0})
    assert make_key({"a": 1}) != make_key({"a": 2})
    assert make_key("x", {"a": 1}) != make_key("y", {"a": 1})


def test_build_once_then_hit(tmp_path):
    c, calls = Cache(tmp_path), []

    def build(d: Path):
        calls.append(d)
        (d / "x.txt").write_text("hello")

    h1 = c.get_or_create("s", "k", build)
    h2 = c.get_or_create("s", "k", build)
    assert not h1.cached and h2.cached and len(calls) == 1
    assert (h2.path / "x.txt").read_text() == "hello" and c.has("s", "k")


def test_failed_build_leaves_nothing(tmp_path):
    c = Cache(tmp_path)

    def build(d: Path):
        (d / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        c.get_or_create("s", "k", build)
    assert not c.has("s", "k")
    assert [p.name for p in (tmp_path / "s").iterdir() if not p.name.endswith(".lock")] == []


def test_incomplete_artifact_without_manifest_is_rebuilt(tmp_path):
    c = Cache(tmp_path)
    (tmp_path / "s" / "k").mkdir(parents=True)
    (tmp_path / "s" / "k" / "junk").write_text("x")
    h = c.get_or_create("s", "k", lambda d: (d / "ok").write_text("1"))
    assert not h.cached and (h.path / "ok").exists() and not (h.path / "junk").exists()


def _worker(root, out):
    def build(d: Path):
        time.sleep(0.5)
        (d / "who").write_text(str(mp.current_process().pid))

    h = Cache(root).get_or_create("s", "k", build)
    out.put((h.cached, (h.path / "who").read_text()))


def test_concurrent_jobs_compute_once(tmp_path):
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_worker, args=(str(tmp_path), q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    res = [q.get(timeout=5) for _ in procs]
    assert sorted(c for c, _ in res) == [False, True, True]
    assert len({who for _, who in res}) == 1


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert (tmp_path / "a" / "r.json").read_text().strip().startswith("{")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]
