"""A cache build that fills the disk ends in one :class:`kaft.diskspace.DiskFullError` line and leaves no temporary
directory (issue 19, item 6). The real cases fill a real filesystem: a tmpfs of 256 KiB mounted for the test (root
only; skipped where mounting is not permitted). The others raise the error shapes a full disk takes (``OSError``
ENOSPC, safetensors' message) from the build, which a test cannot otherwise make happen on demand."""

from __future__ import annotations

import errno

import pytest

from kaft.cache import Cache
from kaft.diskspace import DiskFullError


@pytest.fixture
def small_disk(tmp_path):
    from helpers import small_disk as mount

    with mount(tmp_path / "small", "256k") as mnt:
        yield mnt


def _left(cache_root, stage: str) -> list[str]:
    d = cache_root / stage
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _build_raising(exc):
    def build(tmp):
        (tmp / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
        raise exc

    return build


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
    ],
)
def test_a_full_disk_error_is_one_line_and_the_temp_dir_goes(tmp_path, exc):
    with pytest.raises(
        DiskFullError,
        match=rf"the disk holding the kaft cache \({tmp_path}\) is full: writing "
        r"train/k stopped after 0\.0 MiB \(removed again\); .* MiB are free",
    ):
        Cache(tmp_path).get_or_create("train", "k", _build_raising(exc))
    assert _left(tmp_path, "train") == []


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        Cache(tmp_path).get_or_create("train", "k", _build_raising(ValueError("a bug")))
    assert _left(tmp_path, "train") == []


def test_a_real_full_disk_plain_write(small_disk):
    def build(tmp):
        (tmp / "big.bin").write_bytes(b"\0" * (1 << 20))  # 1 MiB on a 256 KiB disk

    with pytest.raises(DiskFullError, match=rf"\({small_disk}\) is full: writing train/k stopped after 0\.2 MiB"):
        Cache(small_disk).get_or_create("train", "k", build)
    assert _left(small_disk, "train") == []


def test_a_real_full_disk_safetensors_save(small_disk):
    """The shape the issue saw: safetensors' save of an adapter on a full disk (a SafetensorError, not an OSError)."""
    import torch
    from safetensors.torch import save_file

    Cache(small_disk).get_or_create("detect", "d", lambda tmp: (tmp / "scores.jsonl").write_text("{}\n"))
    with pytest.raises(DiskFullError, match="writing train/k stopped after"):
        Cache(small_disk).get_or_create(
            "train", "k", lambda tmp: save_file({"w": torch.zeros(256, 256)}, str(tmp / "adapter_model.safetensors"))
        )
    assert _left(small_disk, "train") == [] and _left(small_disk, "detect") == ["d"]  # the finished one stays
