"""Every relative link in the project's Markdown resolves: the file exists, and a ``#fragment`` names a heading of it."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO_ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown_files() -> list[Path]:
    roots = [REPO_ROOT / "README.md", REPO_ROOT / "checkpoints" / "README.md"]
    return roots + sorted((REPO_ROOT / "docs").glob("*.md")) + sorted((REPO_ROOT / "benchmarks").rglob("*.md"))


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def _broken(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    broken = []
    for link in LINK.findall(text):
        if re.match(r"[a-z]+:", link):  # http(s), mailto: not checked here (no internet)
            continue
        path, _, fragment = link.partition("#")
        target = (md.parent / path) if path else md
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif fragment and target.suffix == ".md" and fragment not in _anchors(target):
            broken.append(f"{link} (no such heading)")
    return broken


def test_relative_markdown_links_resolve():
    files = _markdown_files()
    assert (REPO_ROOT / "docs" / "training.md") in files and (REPO_ROOT / "docs" / "ARCHITECTURE.md") in files
    problems = {str(md.relative_to(REPO_ROOT)): b for md in files if (b := _broken(md))}
    assert not problems, problems


def test_the_link_check_catches_a_missing_file_and_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n[ok](#title-here) [gone](b.md) [no](#nothing) [web](https://x.org)\n")
    assert _broken(tmp_path / "a.md") == ["b.md (no such file)", "#nothing (no such heading)"]
