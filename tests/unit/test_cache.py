"""The content-addressed cache: atomic artifacts, keys that track their inputs, one builder under concurrency
(a lock file that works on shared filesystems, with stale-lock recovery), and artifacts verified against the
hashes in their manifest."""

import json
import logging
import multiprocessing as mp
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from kaft.cache import Cache, atomic_write_json, make_key, verify
from kaft.lock import _proc_start


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
    assert not (tmp_path / "s" / ".k.lock").exists()  # released


def test_failed_build_leaves_nothing(tmp_path):
    c = Cache(tmp_path)

    def build(d: Path):
        (d / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        c.get_or_create("s", "k", build)
    assert not c.has("s", "k")
    assert [p.name for p in (tmp_path / "s").iterdir()] == []  # no temp dir, no lock file


def test_incomplete_artifact_without_manifest_is_rebuilt(tmp_path):
    c = Cache(tmp_path)
    (tmp_path / "s" / "k").mkdir(parents=True)
    (tmp_path / "s" / "k" / "junk").write_text("x")
    h = c.get_or_create("s", "k", lambda d: (d / "ok").write_text("1"))
    assert not h.cached and (h.path / "ok").exists() and not (h.path / "junk").exists()


# ----------------------------------------------------------------------------------------------- concurrency
def _counting_build(root: str, seconds: float):
    def build(d: Path):
        builds = Path(root) / "builds"
        builds.mkdir(exist_ok=True)
        (builds / f"{os.getpid()}-{time.time_ns()}").write_text("")  # one file per build call: counts across processes
        time.sleep(seconds)
        (d / "who").write_text(str(os.getpid()))
        (d / "sub").mkdir()
        (d / "sub" / "data.bin").write_bytes(os.urandom(1000))

    return build


def _worker(root, out, start_at):
    logging.basicConfig(level=logging.INFO)
    time.sleep(max(0.0, start_at - time.time()))  # all four hit the missing key at the same moment
    # a heartbeat of 0.1 s against a stale timeout of 0.6 s: a 1.5 s build is only safe if the holder's heartbeat works
    h = Cache(root, heartbeat=0.1, stale_after=0.6).get_or_create("s", "k", _counting_build(root, 1.5))
    out.put((h.cached, (h.path / "who").read_text(), (h.path / "sub" / "data.bin").read_bytes().hex()))


def _race(root: Path, n: int = 4):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 3.0  # spawn takes a while: start them together
    procs = [ctx.Process(target=_worker, args=(str(root), q, start_at)) for _ in range(n)]
    for p in procs:
        p.start()
    res = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return res


def test_four_concurrent_processes_build_once_and_share_it(tmp_path):
    res = _race(tmp_path)
    assert len(list((tmp_path / "builds").iterdir())) == 1  # build ran exactly once
    assert sorted(c for c, _, _ in res) == [False, True, True, True]
    assert len({(who, data) for _, who, data in res}) == 1  # all four read the same content
    assert not (tmp_path / "s" / ".k.lock").exists()


def _dead_pid() -> tuple[int, int | None]:
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start()
    pid = p.pid
    start = _proc_start(pid)
    p.join()
    return pid, start


def _plant_lock(root: Path, **holder):
    (root / "s").mkdir(parents=True, exist_ok=True)
    lock = root / "s" / ".k.lock"
    lock.write_text(json.dumps({"since": time.time() - 5, "token": "someone-else", **holder}))
    return lock


def test_stale_lock_of_a_dead_process_is_recovered_at_once_by_one_of_four(tmp_path, caplog):
    pid, start = _dead_pid()
    _plant_lock(tmp_path, host=socket.gethostname(), pid=pid, pid_start=start)
    t0 = time.time()
    res = _race(tmp_path)
    assert time.time() - t0 < 60
    assert len(list((tmp_path / "builds").iterdir())) == 1  # breaking the lock did not let two of them build
    assert len({(who, data) for _, who, data in res}) == 1


def test_stale_lock_in_process(tmp_path, caplog):
    pid, start = _dead_pid()
    _plant_lock(tmp_path, host=socket.gethostname(), pid=pid, pid_start=start)
    t0 = time.time()
    with caplog.at_level(logging.INFO, logger="kaft.cache"):
        h = Cache(tmp_path, stale_after=3600).get_or_create("s", "k", lambda d: (d / "x").write_text("1"))
    assert not h.cached and time.time() - t0 < 5  # the pid check, not the heartbeat timeout
    assert f"pid {pid} on this host) is gone" in caplog.text


def test_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    """The holder's pid now belongs to another process (here: this one): its start time tells them apart."""
    _plant_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), pid_start=12345)
    h = Cache(tmp_path, stale_after=3600).get_or_create("s", "k", lambda d: (d / "x").write_text("1"))
    assert not h.cached


def test_lock_of_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path, caplog):
    lock = _plant_lock(tmp_path, host="some-other-node", pid=1)
    stop = threading.Event()

    def heartbeat():  # the other node's holder, alive for 2 s
        t_end = time.time() + 2.0
        while time.time() < t_end and not stop.is_set():
            os.utime(lock)
            time.sleep(0.1)

    t = threading.Thread(target=heartbeat)
    t.start()
    t0 = time.time()
    with caplog.at_level(logging.INFO, logger="kaft.cache"):
        h = Cache(tmp_path, stale_after=0.8).get_or_create("s", "k", lambda d: (d / "x").write_text("1"))
    waited = time.time() - t0
    stop.set()
    t.join()
    assert not h.cached
    assert 2.0 + 0.8 - 0.3 < waited < 10, waited  # waited through the live heartbeat, then the stale timeout
    assert "being computed by some-other-node pid 1" in caplog.text
    assert "heartbeat has not moved" in caplog.text


# ----------------------------------------------------------------------------------------------- integrity
def _build_counted(calls):
    def build(d: Path):
        calls.append(1)
        (d / "a.txt").write_text("hello world")
        (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(b"\x00" * 4096)

    return build


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip_byte", "delete_manifest"])
def test_damaged_artifact_is_detected_and_rebuilt(tmp_path, damage, caplog):
    c, calls = Cache(tmp_path), []
    h = c.get_or_create("s", "k", _build_counted(calls))
    manifest = json.loads((h.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin"} and len(manifest["content_hash"]) == 64
    assert manifest["files"]["a.txt"]["size"] == 11 and verify(h.path) is None
    target = h.path / "sub" / "b.bin"
    if damage == "truncate":
        target.write_bytes(b"\x00" * 100)
    elif damage == "delete":
        target.unlink()
    elif damage == "flip_byte":  # same size: only the sha256 catches it
        target.write_bytes(b"\x00" * 4095 + b"\x01")
    else:
        (h.path / "manifest.json").unlink()
    assert c.get_or_create("s", "k", _build_counted(calls)).cached is False and len(calls) == 2
    assert verify(h.path) is None and (h.path / "sub" / "b.bin").read_bytes() == b"\x00" * 4096
    if damage != "delete_manifest":
        assert "is damaged" in caplog.text
    assert c.get_or_create("s", "k", _build_counted(calls)).cached and len(calls) == 2
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["k"]  # the damaged copy is gone


def test_size_only_verification_skips_the_hash(tmp_path, monkeypatch):
    c, calls = Cache(tmp_path), []
    h = c.get_or_create("s", "k", _build_counted(calls))
    (h.path / "sub" / "b.bin").write_bytes(b"\x00" * 4095 + b"\x01")
    monkeypatch.setenv("KAFT_CACHE_VERIFY", "size")
    assert c.get_or_create("s", "k", _build_counted(calls)).cached  # same size: not checked
    monkeypatch.setenv("KAFT_CACHE_VERIFY", "0.001")  # 1 KiB: this 4 KiB artifact is over it
    assert c.get_or_create("s", "k", _build_counted(calls)).cached
    monkeypatch.setenv("KAFT_CACHE_VERIFY", "full")
    assert not c.get_or_create("s", "k", _build_counted(calls)).cached and len(calls) == 2


def test_old_manifest_with_names_only_is_accepted(tmp_path):
    d = tmp_path / "s" / "k"
    d.mkdir(parents=True)
    (d / "x.txt").write_text("1")
    (d / "manifest.json").write_text(json.dumps({"files": ["x.txt"]}))
    assert Cache(tmp_path).get_or_create("s", "k", lambda p: None).cached
    (d / "x.txt").unlink()
    assert not Cache(tmp_path).get_or_create("s", "k", lambda p: (p / "x.txt").write_text("2")).cached


# ----------------------------------------------------------------------------------------------- modes
def test_artifacts_and_atomic_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        h = Cache(tmp_path).get_or_create("s", "k", lambda d: (d / "x").write_text("1"))
        atomic_write_json(tmp_path / "r.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(h.path.stat().st_mode) == 0o750  # not mkdtemp's 0700: a group can share the cache
    assert stat.S_IMODE((h.path / "manifest.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o640


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert (tmp_path / "a" / "r.json").read_text().strip().startswith("{")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_lock_of_this_slurm_job_before_its_requeue_is_stale_at_once(tmp_path, monkeypatch):
    _plant_lock(tmp_path, host="node-that-ran-it-first", pid=4242, slurm_job="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    t0 = time.time()
    assert not Cache(tmp_path, stale_after=3600).get_or_create("s", "k", lambda d: (d / "x").write_text("1")).cached
    assert time.time() - t0 < 5
