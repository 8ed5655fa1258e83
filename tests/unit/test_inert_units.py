"""Hostile strings through `drills.inert`, rendered by GitHub's own Markdown engine (cmark-gfm)
with raw HTML allowed and no tag filter: no tag the text carried survives as a tag, the text a
reader sees is the text we were given, and a fence closes where we opened it."""

from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options
from hypothesis import given, settings
from hypothesis import strategies as st

from drills import inert, report
from drills.result import CheckRecord
from tests.unit.test_drill_units import _state

HOSTILE = [
    "x<img src=x onerror=document.title='PWNED'>",
    "<script>alert(1)</script>",
    "</td></tr><tr><td><b>forged</b>",
    "[click](javascript:alert(1))",
    "![x](javascript:alert(1))",
    "<javascript:alert(1)>",
    "<!-- hide the rest",
    "<?php echo 1 ?>",
    "&lt;img src=x onerror=alert(1)&gt; &amp; &#60;b&#62;",
    "a | b || c",
    "```\n<img src=x onerror=alert(2)>\n```",
    "`code` and ``x`` and `` ` `` and a lone `",
    "*b* **B** _i_ __I__ ~~s~~ $x$ atb_drill_1 _edge_",
    "# heading",
    "> quote",
    "- list",
    "+ list",
    "1. ordered",
    "12) ordered",
    "    indented code",
    "\tindented code",
    "line\nbreak\r\nand\rmore",
    "\\<img src=x onerror=alert(3)>",
    "\\",
    "trailing backslash \\",
    "=====",
    "<<<>>>&&&",
]
TAGS_OK = {"p", "table", "thead", "tbody", "tr", "th", "td", "code", "pre", "ul", "li", "h3",
           "strong"}


class Page(HTMLParser):
    """The tags a browser would build and the text a reader would see."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.by_tag: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._open.append(tag)
        self.by_tag.setdefault(tag, []).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for tag in set(self._open):
            self.by_tag[tag][-1] += data

    def handle_comment(self, data: str) -> None:
        self.tags.append(("!--", []))

    def handle_pi(self, data: str) -> None:
        self.tags.append(("?", []))

    def unknown_decl(self, data: str) -> None:
        self.tags.append(("!", []))


def gfm(markdown: str) -> Page:
    """`markdown` as GitHub renders it, raw HTML allowed and without its tag filter."""
    html = cmarkgfm.markdown_to_html_with_extensions(
        markdown, options=Options.CMARK_OPT_UNSAFE,
        extensions=["table", "strikethrough", "autolink"])
    page = Page()
    page.feed(html)
    page.close()
    return page


def shown(text: str) -> str:
    """What a reader must see: the text on one line, a code span's backticks not shown."""
    return " ".join(inert._CODE_SPAN.sub(r"\1", inert.one_line(text)).split())


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_inert(page: Page) -> None:
    found = {tag for tag, _ in page.tags}
    assert found <= TAGS_OK, found


def test_a_table_cell_holds_the_text_and_no_markup() -> None:
    for text in HOSTILE:
        page = gfm(f"| a | b |\n|---|---|\n| {inert.md_cell(text)} | end |\n")
        assert_inert(page)
        cells = page.by_tag["td"]
        assert len(cells) == 2 and cells[1] == "end", (text, cells)
        assert flat(cells[0]) == shown(text), text


def test_a_line_heading_or_list_item_holds_the_text_and_no_markup() -> None:
    for text in HOSTILE:
        for before, tag in (("", "p"), ("- ", "li"), ("### ", "h3")):
            page = gfm(f"{before}{inert.md_text(text)}\n")
            assert_inert(page)
            assert [t for t, _ in page.tags if t not in ("code", "ul")] == [tag], (text, tag)
            assert flat(page.by_tag[tag][0]) == shown(text), (text, tag)


def test_a_fence_is_longer_than_any_backtick_run_and_closes_where_opened() -> None:
    for text in [*HOSTILE, "````` five\n`` two", "~~~\nx\n~~~", "```python\nprint(1)\n```"]:
        page = gfm(f"{inert.md_fence(text)}\n\nafter\n")
        assert [t for t, _ in page.tags] == ["pre", "code", "p"], text
        assert page.by_tag["code"][0] == text.replace("\r\n", "\n").replace("\r", "\n") + "\n"
        assert page.by_tag["p"] == ["after"]
    assert inert.md_fence("a ```` b").startswith("`````\n")


def test_a_code_span_shows_its_text_exactly() -> None:
    for text in ("`", "a`b", "``x``", " padded ", "<img src=x onerror=alert(1)>", "|"):
        page = gfm(f"see {inert.md_code(text)} here\n")
        assert [t for t, _ in page.tags] == ["p", "code"], text
        assert page.by_tag["code"][0] == text
    page = gfm(f"| a |\n|---|\n| {inert.md_code('x | y', cell=True)} |\n")
    assert page.by_tag["code"] == ["x | y"]


def test_html_text_escapes_for_text_and_either_quote() -> None:
    assert inert.html_text("<a href='x' title=\"y\">&") == \
        "&lt;a href=&#x27;x&#x27; title=&quot;y&quot;&gt;&amp;"


def test_plain_names_are_left_as_they_read() -> None:
    for text in ("atb_drill_8a06eb6d", "backup-20261122T170000Z.dump", "0005_rename -> 0006",
                 "52258 rows in 7 tables (counts checksum at backup time)"):
        assert inert.md_cell(text) == text
    assert inert.md_cell("`python -m pytest -q tests` exited 0") == \
        "`python -m pytest -q tests` exited 0"


HOSTILE_CHARS = st.sampled_from([*"<>&|`*_[]()!#>-+=~$\\'\" \t\n\r.1aZé", "<img", "<script>",
                                 "javascript:", "```", "&lt;", "&#60;", "<!--", "1.", "    "])


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTILE_CHARS, max_size=30).map("".join))
def test_any_text_in_a_cell_or_a_line_is_shown_as_it_is(text: str) -> None:
    page = gfm(f"| a |\n|---|\n| {inert.md_cell(text)} |\n")
    assert_inert(page)
    assert len(page.by_tag["td"]) == 1 and flat(page.by_tag["td"][0]) == shown(text)
    page = gfm(f"- {inert.md_text(text)}\n")
    assert_inert(page)
    assert flat("".join(page.text)) == shown(text)


def test_the_markdown_report_of_hostile_names_and_outputs_is_inert() -> None:
    state = _state([("test_x", "passed")])
    payload = "x<img src=x onerror=document.title='PWNED'>"
    state.checks = [
        CheckRecord(name="test_a[<script>alert(1)</script>]",
                    title=report.title("test_a[<script>alert(1)</script>]"), outcome="failed",
                    evidence=(f"table {payload} | `quoted` |",),
                    message=f"expected 1\n```\n{payload}\n````\nfound 2"),
        CheckRecord(name="test_b", title="B", outcome="error", evidence=(),
                    message="``````` seven\n<script>alert(2)</script>"),
    ]
    state.findings = [f"# {payload}", "- [x](javascript:alert(1))"]
    result = state.result()
    md = report.to_markdown(result)
    page = gfm(md)
    assert {t for t, _ in page.tags} <= TAGS_OK | {"h1", "h2", "hr"}
    assert len(page.by_tag["pre"]) == 2  # the two failures, each one fenced block
    assert page.by_tag["pre"] == [
        f"expected 1\n```\n{payload}\n````\nfound 2\n",
        "``````` seven\n<script>alert(2)</script>\n"]
    assert f"table {payload} | quoted |" in page.by_tag["td"]  # the evidence, as text
    assert page.by_tag["h3"] == ["A[<script>alert(1)</script>]: failed", "B: error"]
    assert page.by_tag["li"] == [f"# {payload}", "- [x](javascript:alert(1))"]


def test_pytest_html_cells_of_a_hostile_node_id_are_escaped() -> None:
    from drills import plugin

    payload = "<img src=x onerror=alert(1)>"
    rep = pytest.TestReport(nodeid=f"t.py::test_x[{payload}]", location=("t.py", 1, "x"),
                            keywords={}, outcome="passed", longrepr=None, when="call",
                            user_properties=[("check", f"X[{payload}]"), ("why", payload),
                                             ("evidence", payload)])
    vars(rep)["extras"] = [{"name": "<b>n</b>", "format_type": "url",
                            "content": "https://e.x/?a=1&b=\""}]
    cells = ['<td class="col-result">Passed</td>', f'<td class="col-testId">{rep.nodeid}</td>',
             '<td class="col-duration">1 ms</td>', '<td class="col-links"></td>']
    plugin.pytest_html_results_table_row(rep, cells)
    assert "<img" not in "".join(cells) and len(cells) == 6
    assert cells[1] == f'<td class="col-testId">t.py::test_x[{inert.html_text(payload)}]</td>'
    assert cells[5] == ('<td class="col-links"><a target="_blank" href="https://e.x/?a=1&amp;b='
                        '&quot;" class="col-links__extra url">&lt;b&gt;n&lt;/b&gt;</a></td>')
    # a collection error has no user properties: its row is escaped too, and does not crash
    collected = pytest.CollectReport(nodeid=f"{payload}.py", outcome="failed",
                                     longrepr="boom", result=[])
    cells = ['<td class="col-result">Error</td>', f"<td>{payload}</td>", "<td></td>",
             "<td></td>"]
    plugin.pytest_html_results_table_row(collected, cells)
    assert "<img" not in "".join(cells)


def test_a_checks_html_extras_become_text_and_its_links_only_http() -> None:
    from drills.plugin.html import _inert_extra

    html_extra = {"name": "x", "format_type": "html", "content": "<img src=x onerror=alert(1)>",
                  "mime_type": None, "extension": None}
    assert _inert_extra(html_extra) == {
        "name": "x", "format_type": "text", "content": "<img src=x onerror=alert(1)>",
        "mime_type": "text/plain", "extension": "txt"}
    script_link = {"name": "<i>go</i>", "format_type": "url", "content": "javascript:alert(1)",
                   "mime_type": None, "extension": None}
    assert _inert_extra(script_link)["format_type"] == "text"
    assert _inert_extra(script_link)["name"] == "<i>go</i>"  # escaped where shown
    web = {**script_link, "content": "https://example.org/run/1"}
    assert _inert_extra(web)["content"] == "https://example.org/run/1"
    assert _inert_extra(web)["format_type"] == "url"


def test_the_index_of_drills_escapes_names_and_links_no_script(tmp_path: Path) -> None:
    from drills.state import ReportPaths

    state = _state([("test_x", "passed")])
    name = "javascript:alert(1)<script>alert(2)</script>'\""
    state.paths = ReportPaths.for_drill(tmp_path, name, state.started_at)
    result = state.result()
    report.write_reports(replace(result, database=name))
    page = Page()
    page.feed((tmp_path / "index.html").read_text())
    assert "script" not in {t for t, _ in page.tags}
    [href] = [dict(a)["href"] for t, a in page.tags if t == "a"]
    assert href == "javascript%253Aalert%25281%2529%253Cscript%253Ealert%25282%2529%253C%252F" \
                   "script%253E%2527%2522/20261123T120000Z-drill.html"  # a relative path
    assert name in "".join(page.text)
