"""Red team of issue 16, the pure parts: what an allowed service may carry."""

from __future__ import annotations

import html
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.store.catalog import COMPLETE, Backup
from backup_core.store.retention import Policy, plan_prune
from backup_core.tools import relay
from drills import inert


@pytest.mark.parametrize(("head", "verdict"), [
    (struct.pack("!ii", 8, relay.SSL_REQUEST), True),
    (struct.pack("!ii", 8, relay.GSSENC_REQUEST), True),
    (struct.pack("!ii", 16, relay.CANCEL_REQUEST), True),
    (struct.pack("!ii", 84, 3 << 16), True),
    (struct.pack("!ii", 84, 2 << 16), True),
    (b"\0\0\0", None),  # a startup sent in pieces: read on before forwarding a byte
    (b"", None),
    (b"GET / HTTP/1.1\r\n", False),
    (b"*1\r\n$4\r\nPING\r\n", False),  # redis
    (b"PING", False),
    (b"\0\x01\0\0", False),  # a length of 65536 or more: no startup packet
    (struct.pack("!ii", 8, 7 << 16), False),
    (struct.pack("!ii", 4, 3 << 16), False),
])
def test_an_allowed_service_refuses_exactly_the_postgresql_openings(
        head: bytes, verdict: bool | None) -> None:
    assert relay.speaks_postgresql(head) is verdict


@pytest.mark.parametrize("hostile", [
    "orders https://evil.example/reset?u=1", "WWW.evil.example/login", "see www.evil.example",
    "ftp://evil.example/x", "HTTPS://EVIL.EXAMPLE"])
def test_an_url_in_untrusted_text_is_no_live_link_in_gfm(hostile: str) -> None:
    """A table name, a check message or a tool's output holding a URL: GFM's extended
    autolinks made it a live link in the audit wiki. Escaped, it shows as it reads."""
    cmarkgfm = pytest.importorskip("cmarkgfm")
    for md in (inert.md_text(hostile), f"| a |\n| - |\n| {inert.md_cell(hostile)} |"):
        rendered = cmarkgfm.github_flavored_markdown_to_html(
            md, options=cmarkgfm.cmark.Options.CMARK_OPT_UNSAFE)
        assert "<a " not in rendered, rendered
        assert html.escape(hostile, quote=False) in rendered


def test_a_host_clock_a_year_ahead_deletes_no_backup_inside_the_retention() -> None:
    """A clock a year ahead (a dead RTC, a bad NTP source) makes the last week's hourly
    backups look a year old; with nothing recent to replace them, none of them expires."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    week = [Backup(path=Path(f"/b/app/{h}.dump"), database="app", state=COMPLETE,
                   taken_at=now - timedelta(hours=h), size=1, mtime=0) for h in range(168)]
    plan = plan_prune(week, now=now + timedelta(days=365), policy=Policy(retention_days=7))
    assert plan.refusal or plan.delete == []
