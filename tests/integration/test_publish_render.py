"""The published wiki as a reader sees it: the index and a drill page, from a wiki filled by
the real publish, rendered by two GFM renderers (markdown-it-py, and GitHub's own cmark-gfm,
raw HTML allowed as wikis allow it) and by headless Chromium."""

from __future__ import annotations

import os
import struct
from html.parser import HTMLParser
from pathlib import Path

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options

from drills import render
from drills.wiki_preview import SAMPLE_NOW, preview, publish_sample, to_html, wiki_pages

README_PNG = Path(__file__).parents[2] / "docs" / "wiki-index.png"
# what a wiki page may contain once rendered: text and these elements, never an element or
# attribute that runs, loads or styles anything
ALLOWED = {"h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "pre",
           "strong", "em", "a", "ul", "li"}


class Tables(HTMLParser):
    """Every element (with its attributes) and every table's rows as cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parsed(html: str) -> Tables:
    p = Tables()
    p.feed(html)
    return p


def github(markdown: str) -> str:
    return str(cmarkgfm.github_flavored_markdown_to_html(markdown,
                                                         options=Options.CMARK_OPT_UNSAFE))


@pytest.fixture(scope="module")
def wiki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return publish_sample(tmp_path_factory.mktemp("wiki"), now=SAMPLE_NOW)


def test_the_index_renders_as_a_table_of_every_drill(wiki: tuple[Path, str]) -> None:
    clone, page = wiki
    [(_, index), _] = wiki_pages(clone, page)
    for html in (to_html(index), github(index)):
        doc = parsed(html)
        assert {t for t, _ in doc.tags} <= ALLOWED, doc.tags
        [table] = doc.tables
        assert table == [
            ["Drill (UTC)", "Database", "Verdict", "RTO", "Data loss", "Report"],
            ["2026-11-29 06:00", "trading", "PASS", "3m 32s (met)", "up to 1h 00m",
             "page · HTML"],
            ["2026-11-16 06:00", "trading", "PASS", "3m 18s (met)", "41s", "page · HTML"],
            ["2026-10-19 06:00", "billing", "INCOMPLETE", "1m 35s (met)", "up to 1h 00m",
             "page · HTML"],
            ["2026-09-27 06:00", "trading", "FAIL", "failed at restore", "up to 1h 00m",
             "page · HTML"],
            ["2026-09-02 06:00", "billing", "PASS", "1m 30s (met)", "up to 1h 00m",
             "page · HTML"]]
        links = [dict(a)["href"] for t, a in doc.tags if t == "a"]
        assert links[:2] == [f"{page}", f"{page}.html"]
        assert all((clone / (href if "." in href.rsplit("/", 1)[-1] else href + ".md")).is_file()
                   for href in links), links  # every link names a file the wiki holds


def test_a_failed_drill_page_renders_its_hostile_text_inert(wiki: tuple[Path, str]) -> None:
    clone, _ = wiki
    [failed] = [p for p in (clone / "restore-drills" / "trading").glob("*-drill.md")
                if "**FAIL**" in p.read_text()]
    markdown = failed.read_text()
    for html in (to_html(markdown), github(markdown)):
        doc = parsed(html)
        assert {t for t, _ in doc.tags} <= ALLOWED, doc.tags
        assert not any(name.startswith("on") for _, attrs in doc.tags for name, _ in attrs)
        assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown as text, in its block
        summary = dict((row[0], row[1]) for row in doc.tables[0] if len(row) == 2)
        assert summary["Verdict"] == "FAIL" and summary["RTO"].startswith("not measured")


def test_chromium_shows_the_index_and_a_drill_page(wiki: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    if render.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (see .ci/run)")
        pytest.skip("no Chromium here: apt-get install chromium")
    clone, page = wiki
    html = tmp_path / "wiki.html"
    html.write_text(preview(wiki_pages(clone, page)))
    png = tmp_path / "wiki.png"
    render.render(html, png=png, width=1200, height=1200)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 1200)
    assert len(data) > 50_000  # two pages of tables and text, not a blank canvas
    # the README's picture is this rendering (python -m drills.wiki_preview)
    readme = README_PNG.read_bytes()
    assert struct.unpack(">II", readme[16:24]) == (1200, 1200)
