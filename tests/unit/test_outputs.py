"""kaft.outputs: a tool replaces a file only if kaft wrote it and nobody changed it since (issue 19, item 2), and the
tools that write user-named paths (analysis.table / results / figures, the sweep summary) keep that rule."""

from __future__ import annotations

import json

import pytest

from kaft import outputs as O


def test_a_file_kaft_wrote_is_replaced_anything_else_refused(tmp_path):
    out = tmp_path / "t.md"
    O.write_text(out, "first\n", "tool")
    assert json.loads((tmp_path / O.MANIFEST).read_text())["t.md"]["tool"] == "tool"
    O.write_text(out, "second\n", "tool")  # its own, unchanged: replaced
    assert out.read_text() == "second\n"
    out.write_text("second, edited by hand\n")
    with pytest.raises(O.OutputError, match="was not written by tool"):
        O.write_text(out, "third\n", "tool")
    assert out.read_text() == "second, edited by hand\n"
    mine = tmp_path / "mine.md"
    mine.write_text("a user's notes\n")
    with pytest.raises(O.OutputError, match="kaft never replaces a file it did not write"):
        O.write_text(mine, "x", "tool")
    assert mine.read_text() == "a user's notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [O.MANIFEST, "mine.md", "t.md"]  # no temp file left


def test_folders_paths_below_files_and_legacy_headers(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(O.OutputError, match="is a folder"):
        O.check_target(tmp_path / "d", "tool")
    (tmp_path / "f").write_text("x")
    with pytest.raises(O.OutputError, match="is a file, not a folder"):
        O.check_target(tmp_path / "f" / "deeper" / "x.md", "tool")
    old = tmp_path / "summary.md"
    old.write_text("# Sweep summary: s\n\nold\n")  # written before the record existed
    O.write_text(old, "# Sweep summary: s\n\nnew\n", "tool", legacy_header="# Sweep summary: ")
    assert "new" in old.read_text()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    out = O.write_text(tmp_path / "t.csv", "a\n", "tool")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        O.write_file(out, "tool", fail)
    assert out.read_text() == "a\n" and sorted(p.name for p in tmp_path.iterdir()) == [O.MANIFEST, "t.csv"]


def test_tools_refuse_a_users_file(tmp_path, capsys):
    from analysis import figures, results, table
    from kaft.sweep import summary

    mine = tmp_path / "mine.csv"
    mine.write_text("precious\n")
    (tmp_path / "figs").mkdir()
    fig = tmp_path / "figs" / "fig2a_score_distribution.png"
    fig.write_bytes(b"a user's png")
    for main, argv in [
        (table.main, [str(tmp_path), "--out", str(mine)]),
        (results.main, [str(tmp_path), "--csv", str(mine)]),
        (figures.main, [str(tmp_path), "--figure", "2a", "--out", str(tmp_path / "figs")]),
    ]:
        assert main(argv) == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kaft: error:")]
        assert len(errors) == 1 and "did not write" in errors[0], errors
    assert mine.read_text() == "precious\n" and fig.read_bytes() == b"a user's png"
    (tmp_path / "summary.csv").write_text("precious\n")
    row = {
        "num": 0,
        "override_dirname": "",
        "overrides": [],
        "status": "done",
        "accs": {},
        "average": None,
        "path": "0",
        "error": None,
    }
    with pytest.raises(O.OutputError, match="summary.csv exists and was not written by the sweep summary"):
        summary.write_summary(tmp_path, [row])
    assert (tmp_path / "summary.csv").read_text() == "precious\n"
    (tmp_path / "new").mkdir()
    first = summary.write_summary(tmp_path / "new", [row])
    assert summary.write_summary(tmp_path / "new", [row]) == first  # its own summary: replaced
