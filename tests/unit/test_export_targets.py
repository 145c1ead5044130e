"""``python -m kaft.export ... --out X --force`` never deletes what kaft did not write (issue 19, item 2).

The targets are made here from plain files (a run dir is a folder with a done results.json, as kaft.results reads
it), so the refusals, which come before any artifact is read, need no trained model; the replacement of a real
export of a real job is tests/unit/test_export.py's (slow) test. Each refused target must come out byte for byte
as it went in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kaft import export as E


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) with the hash of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _run_dir(path: Path) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (path / "results.json").write_text(json.dumps({"status": "done", "config": {}}))
    (path / "run.log").write_text("a log the user keeps\n")
    return path


def _row(i: int) -> dict:
    row = {name: None for name in E.COLUMNS}
    row.update(
        id=f"q{i}",
        question="q?",
        options=["a", "b"],
        answer=0,
        answer_letter="A",
        prompt="p",
        completion=" A",
        score=0.5,
        subset=0,
        subset_name="wrong",
        reward=1.0,
        majority_answer=0,
        answer_dist=[0.5, 0.5],
        dist_source="samples",
        n_samples=2,
        n_unparsed=0,
    )
    return row


def _kaft_export(path: Path) -> Path:
    E.write_export([_row(0), _row(1)], {"run_dir": "elsewhere", "n_items": 2}, path)
    return path


@pytest.fixture
def runs(tmp_path):
    """A folder holding two run dirs, a sweep dir and a user's notes."""
    root = tmp_path / "experiments"
    _run_dir(root / "run_a")
    _run_dir(root / "run_b")
    (root / "notes.txt").write_text("the only copy\n")
    sweep = root / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    _run_dir(sweep / "1")
    return root


def _refused(capsys, args: list, message: str) -> None:
    assert E.main([str(a) for a in args]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kaft: error:")]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize(
    "target, message",
    [
        (".", "is not an export kaft wrote: it holds no kaft export manifest"),  # the parent of several runs
        ("run_b", "is not an export kaft wrote"),  # another run dir
        ("run_a", "is not an export kaft wrote"),  # the exported run itself
        ("sweep", "is not an export kaft wrote"),
        ("run_a/.hydra", "is not an export kaft wrote"),  # a folder inside a run dir
        ("notes.txt", "is a file; pass --out a new folder"),
        ("run_a/results.json", "is a file; pass --out a new folder"),
        ("notes.txt/x", "notes.txt is a file, not a folder"),
    ],
)
def test_force_refuses_what_kaft_did_not_write(runs, capsys, target, message):
    before = _snapshot(runs)
    _refused(capsys, [runs / "run_a", "--out", runs / target, "--force"], message)
    assert _snapshot(runs) == before
    assert not list(runs.rglob(".*.old-*")) and not [p for p in runs.rglob(".*") if p.name != ".hydra"]


def test_an_export_with_a_file_added_or_without_a_manifest_is_refused(runs, tmp_path, capsys):
    added = _kaft_export(tmp_path / "added")
    (added / "my_analysis.ipynb").write_text("{}")
    old = _kaft_export(tmp_path / "old")
    manifest = json.loads((old / "export.json").read_text())
    (old / "export.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "kind"}))
    for target, message in [
        (added, "1 file(s) the export did not write (e.g. my_analysis.ipynb)"),
        (old, "no kaft export manifest"),
    ]:
        before = _snapshot(target)
        _refused(capsys, [runs / "run_a", "--out", target, "--force"], message)
        assert _snapshot(target) == before


def test_a_kaft_export_is_recognised_and_replaced_only_with_force(tmp_path):
    out = _kaft_export(tmp_path / "exp")
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["kind"] == E.EXPORT_KIND and "train.parquet" in manifest["files"]
    assert any(f.startswith("dataset/") for f in manifest["files"]) and "export.json" not in manifest["files"]
    E.check_out(out, force=True)  # a kaft export: replaceable
    with pytest.raises(E.ExportError, match="exists; pass --force"):
        E.check_out(out, force=False)
    (tmp_path / "empty").mkdir()
    E.check_out(tmp_path / "empty", force=False)  # nothing there to lose
    E.check_out(tmp_path / "new" / "exp", force=False)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(E.ExportError, match="symbolic link"):
        E.check_out(tmp_path / "link", force=True)


def test_the_replacement_keeps_the_atomic_swap(tmp_path):
    """What ``--force`` does after the check: the new export renamed in, the old one gone, no temp dir left."""
    out = _kaft_export(tmp_path / "exp")
    new = _kaft_export(tmp_path / ".exp.tmp12345678")
    (new / "marker").write_text("new")
    E._swap_into_place(new, out)
    assert (out / "marker").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
