"""The largest table's COPY text cut into chunks of whole rows (`backup_core.ops.split_copy`)."""

from __future__ import annotations

import io

import pytest

from backup_core.ops import split_copy
from backup_core.ops.split_copy import Cut, cut, read_header, split_candidate
from backup_core.reading.toc import TocEntry
from backup_core.tools.errors import CommandFailed


def test_a_chunk_is_cut_after_its_last_newline_and_the_rest_carried() -> None:
    assert cut(b"1\ta\n2\tb\n3\tc") == Cut(b"1\ta\n2\tb\n", b"3\tc", False)
    assert cut(b"half a row") == Cut(b"", b"half a row", False)


def test_the_end_line_ends_the_rows_only_at_a_line_start() -> None:
    assert cut(b"1\ta\n2\tb\n\\.\n\n--\n") == Cut(b"1\ta\n2\tb\n", b"", True)
    assert cut(b"\\.\n-- tail\n") == Cut(b"", b"", True)
    # a value holding a backslash and a dot is written `\\.`: a row, not the end
    assert cut(b"1\t\\\\.\n2\tx\\.y\n") == Cut(b"1\t\\\\.\n2\tx\\.y\n", b"", False)
    # a newline inside a value is written `\n` (backslash, n): still one line
    assert cut(b"1\tline\\nnext\n") == Cut(b"1\tline\\nnext\n", b"", False)


def test_the_end_line_split_across_two_reads_is_found_in_the_carry() -> None:
    first = cut(b"1\ta\n\\")
    assert first == Cut(b"1\ta\n", b"\\", False)
    assert cut(first.carry + b".\n") == Cut(b"", b"", True)


def entry(tag: str, dump_id: int, desc: str = "TABLE DATA") -> TocEntry:
    return TocEntry(desc=desc, schema="public", tag=tag, owner="app", dump_id=dump_id)


def test_the_table_with_most_rows_is_split_when_it_is_large_enough() -> None:
    toc = [entry("orders", 7, "TABLE"), entry("orders", 30), entry("trades", 31),
           entry("accounts", 29)]
    counts = {"public.orders": 3_000_000, "public.trades": 200_000, "public.accounts": 500}
    assert split_candidate(toc, counts) == entry("orders", 30)
    assert split_candidate(toc, counts, min_rows=3_000_001) is None
    # a count for a table whose data is not in the archive (excluded) is not a candidate
    assert split_candidate(toc[2:], {**counts, "public.trades": 2_000_000}) == \
        entry("trades", 31)
    assert split_candidate(toc, {}) is None
    # below a million rows the split's extra pg_restore runs cost more than they save
    assert split_copy.MIN_ROWS == 1_000_000
    assert split_candidate(toc, {"public.orders": 999_999}) is None
    # one job has nobody to share a table with
    assert split_candidate(toc, counts, jobs=1) is None


def test_a_table_is_split_only_when_it_would_load_alone_for_long() -> None:
    """Its rows must pass 1.5 times what the other tables give each other job: the bench's
    orders (55 % of the rows) restored faster unsplit, by pg_restore's own scheduling."""
    toc = [entry("orders", 30), entry("trades", 31), entry("accounts", 29)]
    bench = {"public.orders": 3_253_763, "public.trades": 2_603_346, "public.accounts": 500}
    assert split_copy.SHARE_MARGIN == 1.5
    assert split_candidate(toc, bench, jobs=2) is None
    # the same tables on 3 jobs: trades alone cannot keep two other jobs busy
    assert split_candidate(toc, bench, jobs=3) == entry("orders", 30)
    # exactly at the margin is not enough; one row over is
    edge = {"public.orders": 3_000_000, "public.trades": 2_000_000}
    assert split_candidate(toc, edge, jobs=2) is None
    assert split_candidate(toc, {**edge, "public.orders": 3_000_001}, jobs=2) == \
        entry("orders", 30)
    # a count of a table outside the archive does not keep a table from being split
    assert split_candidate(toc, {**edge, "public.gone": 9_000_000}, jobs=2) is None
    assert split_candidate(toc[:1], {**edge, "public.gone": 9_000_000}, jobs=2) == \
        entry("orders", 30)


def test_the_header_keeps_pg_restores_settings_and_its_copy_statement() -> None:
    script = (b"--\n-- PostgreSQL database dump\n--\n\\restrict abc\n"
              b"SET client_encoding = 'LATIN1';\nSET standard_conforming_strings = on;\n"
              b"SELECT pg_catalog.set_config('search_path', '', false);\n\n"
              b"COPY public.caf\xe9 (id, note) FROM stdin;\n1\tx\n\\.\n")
    out = io.BytesIO(script)
    header = read_header(out)
    assert header.settings == (b"SET client_encoding = 'LATIN1';",
                               b"SET standard_conforming_strings = on;",
                               b"SELECT pg_catalog.set_config('search_path', '', false);")
    assert header.copy == b"COPY public.caf\xe9 (id, note) FROM stdin"
    assert out.read() == b"1\tx\n\\.\n"
    with pytest.raises(CommandFailed, match="no COPY"):
        read_header(io.BytesIO(b"SET x = 1;\n"))
