"""Which tables a restore has committed, read from pg_restore's own verbose lines: the
parallel leader's `finished item`, and with one job the next item's start."""

from __future__ import annotations

from backup_core.ops.restore import LoadWatch
from backup_core.reading import toc

LISTING = """;
; Archive created at 2026-11-30 08:00:00 UTC
3364; 0 16390 TABLE DATA public a atb
3365; 0 16400 TABLE DATA s2 a atb
3366; 0 16396 TABLE DATA public we.ird atb
3367; 0 16410 TABLE DATA public.we ird atb
3369; 0 16405 TABLE DATA public p1 atb
3376; 0 0 SEQUENCE SET public sq atb
3368; 0 16402 MATERIALIZED VIEW DATA public mv atb
3220; 2606 16409 CONSTRAINT public a a_pkey atb
"""
ENTRIES = toc.parse_listing(LISTING)


def reported(lines: list[str], *, parallel: bool) -> list[str]:
    watch = LoadWatch.of(ENTRIES, parallel=parallel)
    return [f"{e.dump_id} {e.schema}.{e.tag}" for ln in lines
            if (e := watch.line(ln)) is not None]


def test_a_parallel_restore_reports_each_table_when_the_leader_says_it_finished() -> None:
    # pg_restore 15 and 18 print the same lines (tag only: the id names the entry)
    lines = ["pg_restore: entering main parallel loop",
             "pg_restore: launching item 3364 TABLE DATA a",
             "pg_restore: launching item 3365 TABLE DATA a",
             'pg_restore: processing data for table "s2.a"',
             "pg_restore: finished item 3365 TABLE DATA a",
             'pg_restore: processing data for table "public.a"',
             "pg_restore: launching item 3376 SEQUENCE SET sq",
             "pg_restore: finished item 3376 SEQUENCE SET sq",
             "pg_restore: finished item 3364 TABLE DATA a",
             "pg_restore: finished item 3368 MATERIALIZED VIEW DATA mv",
             # two jobs' writes on one line: a worker's prefix, then the leader's line
             "pg_restore: pg_restore: finished item 3366 TABLE DATA we.ird",
             "pg_restore: finished item 9999 TABLE DATA elsewhere",
             # a name that holds the words is not the leader's line
             'pg_restore: creating TABLE "public.finished item 3367 TABLE DATA x"',
             "pg_restore: finished item 3367 TABLE DATA ird-not-its-tag",
             "pg_restore: finished main parallel loop"]
    assert reported(lines, parallel=True) == ["3365 s2.a", "3364 public.a",
                                              "3366 public.we.ird"]


def test_one_job_reports_a_table_when_the_next_item_starts() -> None:
    lines = ['pg_restore: creating TABLE "public.p1"',
             'pg_restore: processing data for table "public.a"',
             'pg_restore: processing data for table "public.p1"',
             "NOTICE:  something the server said meanwhile",
             'pg_restore: processing data for table "s2.a"',
             "pg_restore: executing SEQUENCE SET sq",
             'pg_restore: processing data for table "public.we.ird"',
             'pg_restore: creating CONSTRAINT "public.a a_pkey"']
    # public.we.ird reads as two entries (public / we.ird and public.we / ird): not reported
    assert reported(lines, parallel=False) == ["3364 public.a", "3369 public.p1", "3365 s2.a"]


def test_a_table_still_loading_when_output_ends_or_fails_is_not_reported() -> None:
    lines = ['pg_restore: processing data for table "public.a"',
             "pg_restore: error: COPY failed for table \"a\": ERROR:  bad",
             "pg_restore: warning: errors ignored on restore: 1"]
    assert reported(lines, parallel=False) == []
    assert reported(['pg_restore: processing data for table "public.a"'], parallel=False) == []
