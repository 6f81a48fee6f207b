"""The README and docs/ link only to what exists: files in the repository and headings (as
GitHub makes their anchors) in the page they point at."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        text = line.lstrip("#").strip().lower()
        found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_exists(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not a link
    dead = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here (no network in tests)
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists() or (anchor and where.suffix == ".md" and anchor not in anchors(where)):
            dead.append(target)
    assert dead == []


def test_the_internals_are_in_docs_and_the_readme_links_them():
    readme = (REPO / "README.md").read_text()
    for doc in ("docs/downloads.md", "docs/build.md"):
        assert (REPO / doc).exists() and f"]({doc})" in readme
    first_screen = readme.split("## ", 1)[0]  # what a renter sees first: the two commands
    assert "nix build .#image" in first_screen and "./tests/run.sh" in first_screen


def test_every_image_tag_shipped_is_the_pinned_sdnext_tag():
    """The image is tagged with SD.Next's tag (nix/image.nix); a manifest or a README command
    that names another one pulls an image that was never built (it happened: deploy/ kept the
    old tag after a pin bump)."""
    from provision.categories import PIN

    texts = {p: p.read_text() for p in [*(REPO / "deploy").rglob("*.yaml"), REPO / "README.md"]}
    texts[REPO / "nix" / "image.nix"] = (REPO / "nix" / "image.nix").read_text()
    tags = set()
    for path, text in texts.items():
        for match in re.finditer(
            r"(?:sdnext|OWNER/REPO):(\d{4}-\d{2}-\d{2})|newTag: (\d{4}-\d{2}-\d{2})|tag = \"(\d{4}-\d{2}-\d{2})\"",
            text,
        ):
            tags.add((path.relative_to(REPO).as_posix(), next(g for g in match.groups() if g)))
    assert len(tags) >= 6
    assert {tag for _, tag in tags} == {PIN["tag"]}, sorted(t for t in tags if t[1] != PIN["tag"])
