"""The docs and the source agree with the repository: every path they cite exists, every reference section README
once held has a docs page, README stays a door, and the distribution name is the one kaft records.

Why a test: paths in prose go stale silently when code moves (``kaft/sweep/naming.py`` cited a
``conf/hydra/default.yaml`` that never existed), and mkdocs only checks links between docs pages, not the
``kaft/...`` paths in backticks that a reader copies into a shell.
"""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("kaft", "conf", "tests", "analysis", "perf", "scripts", "sweeps", "docs")  # not hydra_plugins/: conf cites
# hydra-submitit-launcher's own hydra_plugins/ files, which live in site-packages
# a repository path: starts with a top-level folder, not inside a longer path or URL (``~/.cache/kaft/``,
# ``github.com/x/kaft/``); it counts when it ends in a file suffix or "/". A placeholder (``conf/loss/<name>.yaml``,
# ``conf/model/*.yaml``) cuts the match at the folder before it, which must exist.
PATH = re.compile(r"(?<![\w.~/$<>-])(?:%s)/[\w./-]*" % "|".join(TOP))
SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}$")


def cited_paths(text: str) -> set[str]:
    """The repository paths ``text`` cites (a sentence's final period or a trailing ``..`` is not part of a path)."""
    out = set()
    for m in PATH.finditer(text):
        p = m.group(0).rstrip(".")
        if p.endswith("/") or SUFFIX.search(p.rsplit("/", 1)[-1]):
            out.add(p)
    return out


def tracked(pattern: str) -> list[Path]:
    """Files git tracks (or would add: untracked, not ignored) under ``pattern``, so build outputs are skipped."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", pattern],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).is_file()]


def docstrings(path: Path) -> str:
    """Every docstring of a Python file (module, classes, functions), joined."""
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return "\n".join(d for n in nodes if (d := ast.get_docstring(n, clean=False)))


def yaml_comments(path: Path) -> str:
    """The comment part of each line of a YAML file (a ``#`` that starts the line or follows whitespace)."""
    return "\n".join(m.group(1) for line in path.read_text().splitlines() if (m := re.search(r"(?:^|\s)#(.*)", line)))


def sources() -> dict[str, str]:
    """Where paths are cited: README and docs pages whole, Python docstrings, conf and sweep comments. CHANGELOG.md
    is left out on purpose: history names paths that no longer exist."""
    out = {"README.md": (ROOT / "README.md").read_text()}
    out |= {str(p.relative_to(ROOT)): p.read_text() for p in tracked("docs/*.md")}
    for folder in ("kaft", "analysis", "perf", "tests", "scripts", "hydra_plugins"):
        out |= {
            str(p.relative_to(ROOT)): docstrings(p)
            for p in tracked(folder)
            if p.suffix == ".py" and p != Path(__file__).resolve()
        }  # this file names stale paths as test data
    out |= {
        str(p.relative_to(ROOT)): yaml_comments(p) for p in tracked("conf") + tracked("sweeps") if p.suffix == ".yaml"
    }
    return out


def test_cited_paths_exist():
    missing = {f"{src}: {p}" for src, text in sources().items() for p in cited_paths(text) if not (ROOT / p).exists()}
    assert not missing, "cited paths that do not exist:\n" + "\n".join(sorted(missing))


def test_the_path_pattern_finds_what_a_reader_would_copy():
    """The pattern itself: a stale path is caught, a placeholder is cut at its folder, URLs and home paths are not
    repository paths. (Without this, a pattern that matched nothing would pass the test above.)"""
    text = (
        "see ``conf/hydra/default.yaml``. and kaft/sweep/naming.py, conf/loss/<name>.yaml, tests/unit/<pkg>/, "
        "~/.cache/kaft/x.py, github.com/a/kaft/b.py, kaft.run, kaft/testbed, $KAFT_DATA_DIR/xiezhi/"
    )
    assert cited_paths(text) == {"conf/hydra/default.yaml", "kaft/sweep/naming.py", "conf/loss/", "tests/unit/"}
    assert not (ROOT / "conf/hydra/default.yaml").exists()
    assert "conf/config.yaml" in cited_paths(docstrings(ROOT / "kaft/sweep/naming.py"))


# The `##` sections of README before the docs site (commit 7ae4514): each must still be a heading of a docs page.
README_SECTIONS = (
    "What a run does",
    "Configuration",
    "Baselines and paper tables",
    "Losses",
    "Conflict detection",
    "Running on a SLURM cluster",
    "Plan a sweep before submitting",
    "Conflict scores for other trainers",
    "Paper tables, figures and the reproduction report",
    "Performance",
    "The embedded testbed",
    "Layout, and extending kaft",
    "Tests",
)


def test_every_former_readme_section_is_a_docs_page():
    headings = {
        m.group(1).strip() for p in tracked("docs/*.md") for m in re.finditer(r"^#{1,3} (.+)$", p.read_text(), re.M)
    }
    assert not [s for s in README_SECTIONS if s not in headings]


def test_readme_is_a_door():
    """README: within about 200 lines, the two commands first (CI runs the second), a link to the docs."""
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= 200
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks[0].strip().endswith(".venv/bin/python -m kaft.run")
    assert blocks[1].strip().endswith(".venv/bin/python -m pytest")
    assert ".venv/bin/python -m pytest\n" in (ROOT / ".ci/run").read_text()
    assert "docs/index.md" in text


def test_distribution_name_is_the_one_kaft_records():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    name = cfg["metadata"]["name"]
    assert name != "kaft"  # taken on the package index by an unrelated project
    track = (ROOT / "kaft/track.py").read_text()
    assert re.search(r'"kaft":\s*"%s"' % re.escape(name), track), "kaft.track reads another distribution name"
    assert f"`{name}`" in (ROOT / "docs/package-name.md").read_text()


def test_every_docs_page_is_in_the_nav():
    """mkdocs --strict warns about a page left out of the nav only where mkdocs runs (CI's docs extra); this checks
    it without mkdocs installed."""
    nav = set(re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in tracked("docs/*.md")}
    assert pages == nav
