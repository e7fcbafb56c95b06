"""The documentation stands on its own: README.md and docs/ link only inside the repository, every
relative link (and its #anchor) resolves, every page named in code exists, and what the pages say
about a damaged lsm table and about `make test` matches the code."""

import re
from pathlib import Path

import pytest

from statebackend.errors import CorruptCheckpointError, StateError
from statebackend.lsm.table import CorruptTableError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target) and ![alt](target), optionally with a "title"; and [label]: target definitions.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def links(page: Path) -> list[str]:
    """The link targets of a Markdown page (code blocks excluded)."""
    text = FENCE.sub("", page.read_text())
    return INLINE_LINK.findall(text) + LINK_DEFINITION.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as `-`."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def relative_links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in links(page)
        if not SCHEME.match(target) and not target.startswith("//")
    ]


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_have_relative_links_to_check() -> None:
    assert (ROOT / "README.md") in PAGES and len(PAGES) > 5
    assert {name(page) for page, _ in relative_links()} >= {"README.md", "docs/kubernetes.md"}


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text and "shared/DESIGN" not in text and "shared/seed" not in text
    for target in links(page):
        assert not target.startswith("file:"), f"{name(page)} links to a local file: {target}"
        if SCHEME.match(target) or target.startswith("//"):
            continue
        path = target.split("#", 1)[0]
        assert not path.startswith("/"), f"{name(page)}: {target} is an absolute path"
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{name(page)}: {target} leaves the repository"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_markdown_file_named_in_code_exists(page: Path) -> None:
    """A page named in code (`docs/x.md`) is in the repository: beside the page or from its root."""
    for named in re.findall(r"`([^`\s]+\.md)`", page.read_text()):
        assert (page.parent / named).exists() or (ROOT / named).exists(), (
            f"{name(page)} names {named}, which is not in the repository"
        )


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_resolves(page: Path) -> None:
    for source, target in relative_links():
        if source != page:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{name(page)}: {target} names no file"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{name(page)}: {target} names no heading"


def test_the_damaged_table_error_is_the_one_documented() -> None:
    page = (ROOT / "docs" / "state-backends.md").read_text()
    assert "`CorruptTableError` (`statebackend.lsm.table`, a `StateError` but not a" in page
    assert issubclass(CorruptTableError, StateError)
    assert not issubclass(CorruptTableError, CorruptCheckpointError)


def test_the_readme_says_make_test_installs_chromium() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "apt-get install -y -q chromium" in makefile
    assert "`make test` also installs Debian's `chromium`" in readme
