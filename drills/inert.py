"""Untrusted text made inert in HTML and Markdown: every report goes through these.

Names from the database, values, pytest ids and output, Alembic's and tools' output may hold
markup. In HTML every such string is escaped. In Markdown (audit wikis render it, raw HTML
included) no raw HTML can pass: text is escaped character by character, code goes in a span or
a fence longer than any backtick run inside it, and a table cell holds no `|` or line break.
The rules are CommonMark's and GFM's; anything they might read as markup is escaped."""

from __future__ import annotations

import html
import re

# Markdown punctuation that can start markup anywhere in a line; `<` and `&` become entities,
# which every engine decodes as text and none reads as HTML or as a character reference.
# `>` opens nothing without a `<` except a quote at the start of a line (see `md_text`), so
# `0005 -> 0006` stays as it reads.
_MD_ESCAPES = {c: "\\" + c for c in "\\`*[]|~$"}
_MD_ESCAPES.update({"<": "&lt;", "&": "&amp;"})
_NEWLINES = re.compile(r"\r\n|\r|\n")
_BACKTICKS = re.compile(r"`+")
# a code span the text already carries (an integration command in backticks), kept as code;
# one with a backtick beside it is text, so two spans never join into one longer fence
_CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_ORDERED = re.compile(r"(\d{1,9})([.)])")


def html_text(text: object) -> str:
    """Text (or an attribute value in either quotes) for HTML."""
    return html.escape(str(text), quote=True)


def one_line(text: str) -> str:
    """Line breaks (CommonMark's: LF, CR, CRLF) as spaces: a table row or a heading stays one."""
    return _NEWLINES.sub(" ", text)


def longest_backtick_run(text: str) -> int:
    return max((len(m.group()) for m in _BACKTICKS.finditer(text)), default=0)


def md_code(text: str, *, cell: bool = False) -> str:
    """`text` as an inline code span: shown literally by every engine (markup included)."""
    text = one_line(text)
    if not text:
        return ""
    fence = "`" * (longest_backtick_run(text) + 1)
    # CommonMark strips one space from each side when both have one; a backtick at an edge
    # would join the fence: pad, so the content shows exactly
    if text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip()):
        text = f" {text} "
    if cell:
        text = text.replace("|", "\\|")  # GFM splits cells before it sees code spans
    return f"{fence}{text}{fence}"


def md_fence(text: str, info: str = "") -> str:
    """`text` as a fenced code block whose fence no line inside can close."""
    fence = "`" * max(3, longest_backtick_run(text) + 1)
    return f"{fence}{_escape_plain(info)}\n{text}\n{fence}"


def _escape_plain(text: str) -> str:
    out = []
    for i, c in enumerate(text):
        if c == "_":
            # `_` between letters or digits never opens or closes emphasis (`atb_drill_1`)
            inner = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append("_" if inner else "\\_")
        elif (c == ":" and text[i + 1:i + 3] == "//") or (
                c == "." and text[max(0, i - 3):i].lower() == "www"):
            # GFM's extended autolinks (`https://…`, `www.…`) would make a live link of a
            # table name or a tool's output: an escaped `:` or `.` is text, never a link
            out.append("\\" + c)
        else:
            out.append(_MD_ESCAPES.get(c, c))
    return "".join(out)


def _inline(text: str, *, cell: bool) -> str:
    text = one_line(text)
    out, done = [], 0
    for m in _CODE_SPAN.finditer(text):
        out += [_escape_plain(text[done:m.start()]), md_code(m.group(1), cell=cell)]
        done = m.end()
    out.append(_escape_plain(text[done:]))
    return "".join(out)


def md_cell(text: str) -> str:
    """Text for a GFM table cell: one line, escaped, `|` escaped even inside code."""
    return _inline(text, cell=True)


def md_text(text: str) -> str:
    """Text on one line of a paragraph, a heading or a list item: escaped, and a start that
    would open a block (a heading, a quote, a list, an indented code block) made literal."""
    out = _inline(text, cell=False)
    if out[:1] in ("#", ">", "-", "+", "="):
        return "\\" + out
    if out[:1] in (" ", "\t"):  # four columns of it would make an indented code block
        return f"&#{ord(out[0])};{out[1:]}"
    m = _ORDERED.match(out)
    if m:
        return f"{m.group(1)}\\{m.group(2)}{out[m.end():]}"
    return out
