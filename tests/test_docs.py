"""The project's Markdown documents: every relative link resolves, and the README stays short.

Checked files: README.md, CHANGELOG.md, conf/README.md and docs/*.md. A link is ``[text](target)``,
``![alt](target)`` or a reference definition ``[label]: target``, outside fenced code blocks and inline
code. Web (``http(s)://``), ``mailto:`` and in-page ``#anchor`` links to the same file are checked for
the anchor only; ``path#anchor`` must name an existing file and, for a Markdown file, one of its
headings by GitHub's slug rules (lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2``...
for repeated headings). Nothing here imports TensorFlow or the project.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
README_MAX_CHARS = 160  # each line strictly shorter


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "conf" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.is_file()]


_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets (an image in a link)
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+[\"'(].*?[\"')])?\s*\)"
)
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']")


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is None:
            out.append((number, line))
    return out


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with inline code blanked out."""
    return [(n, _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)) for n, line in outside_fences(text)]


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading's text: markup dropped, lower case, punctuation out, spaces to '-'."""
    parts = []
    for i, part in enumerate(re.split(r"(`+[^`]*`+)", heading)):
        if i % 2:  # a code span: its text as it is
            parts.append(part.strip("`"))
            continue
        part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)  # a link or image: its text
        part = re.sub(r"<[^>]+>", "", part)  # inline HTML
        part = re.sub(r"(\*\*|__|\*|_(?=\W|$)|(?<=\W)_|^_|~~)", "", part)  # emphasis markers, not snake_case
        parts.append(part)
    text = "".join(parts).strip().lower()
    kept = [ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Mn"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeated ones numbered) and <a id>s."""
    text = path.read_text(encoding="utf-8")
    found = {anchor for _, line in prose_lines(text) for anchor in _HTML_ANCHOR.findall(line)}
    seen: dict[str, int] = {}
    for _, line in outside_fences(text):
        heading = _HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link of a Markdown file."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in _INLINE_LINK.finditer(line):
            out.append((number, match.group(1)))
        ref = _REF_DEF.match(line)
        if ref:
            out.append((number, ref.group(1)))
    return [(n, t[1:-1] if t.startswith("<") and t.endswith(">") else t) for n, t in out]


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        where = f"{path.relative_to(ROOT)}:{number}: {target!r}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:...
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        if not file_part and not anchor:
            problems.append(f"{where}: empty link")
            continue
        if file_part.startswith("/"):
            problems.append(f"{where}: absolute path (GitHub resolves it against the site, not the repository)")
            continue
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{where}: no such file or folder")
            continue
        try:
            resolved.relative_to(ROOT)
        except ValueError:
            problems.append(f"{where}: leads outside the repository")
            continue
        if anchor and resolved.suffix.lower() == ".md" and unquote(anchor).lower() not in anchors(resolved):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {resolved.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    long = [f"line {i}: {len(line)} characters" for i, line in enumerate(lines, 1) if len(line) >= README_MAX_CHARS]
    assert long == [], f"README.md lines of {README_MAX_CHARS} characters or more: {long}"


def test_every_doc_is_checked():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "CHANGELOG.md"} <= names


# ------------------------------------------------------------------ the checker itself, on small cases


@pytest.mark.parametrize(
    "heading, slug",
    [
        ("Two commands", "two-commands"),
        ("`lungseg predict`: exit codes", "lungseg-predict-exit-codes"),
        ("Earlier figures: one 9/4 split (replaced)", "earlier-figures-one-94-split-replaced"),
        ("**Bold** and [a link](x.md)", "bold-and-a-link"),
        ("inference.limits and snake_case", "inferencelimits-and-snake_case"),
        ("Lung × infection — 3D", "lung--infection--3d"),
        ("The `_training` anchor and _emphasis_", "the-_training-anchor-and-emphasis"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_checker_finds_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Part\n\n## Part\n", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#part-1) ![ok](img.png) [web](https://example.org/x) [top](#readme)\n"
        "[missing](docs/b.md) [bad anchor](docs/a.md#nope) ![gone](gone.png) [self](#nowhere)\n"
        "`[code](not-a-link.md)`\n```\n[fenced](not-a-link.md)\n```\n[ref]: docs/missing.md\n"
        '<a id="readme"></a>\n',
        encoding="utf-8",
    )
    found = broken_links(doc)
    assert [p.split(": ", 1)[1].split(":")[0] for p in found] == [
        "'docs/b.md'",
        "'docs/a.md#nope'",
        "'gone.png'",
        "'#nowhere'",
        "'docs/missing.md'",
    ]
