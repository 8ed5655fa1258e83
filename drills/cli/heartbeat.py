"""`atb tests heartbeat`: the application's liveness row, written or judged by its age."""

from __future__ import annotations

import click

from backup_core.ops import heartbeat
from backup_core.tools.durations import human
from drills.cli import output
from drills.cli.params import EXIT_CODES, conn, database_url_option, json_option


@click.group("tests", epilog=EXIT_CODES)
def tests_group() -> None:
    """Application probes used by monitoring."""


@tests_group.command("heartbeat", epilog=EXIT_CODES)
@database_url_option()
@click.option("--table", default=heartbeat.DEFAULT_TABLE,
              help="The application's SystemEvent table (columns type, message, created_at).")
@click.option("--check", is_flag=True,
              help="Insert nothing; exit 1 when the newest heartbeat is older than --max-age.")
@click.option("--max-age", default="15m", help="With --check: the oldest acceptable heartbeat.")
@json_option
def heartbeat_cmd(database_url: str, table: str, check: bool, max_age: str, as_json: bool) -> None:
    """Insert a heartbeat row (type TEST, message Heartbeat), or check the newest one's age."""
    if not check:
        at = heartbeat.insert_heartbeat(conn(database_url), table=table)
        output.show({"inserted_at": at}, as_json=as_json,
                    text=lambda _: f"heartbeat inserted at {at.isoformat()}")
        return
    found = heartbeat.check_heartbeat(conn(database_url), table=table, max_age=max_age)
    output.show(found, as_json=as_json, text=_age_text)
    if not found.ok:
        raise SystemExit(1)


def _age_text(found: heartbeat.HeartbeatAge) -> str:
    return (f"{'OK' if found.ok else 'STALE'}: newest heartbeat "
            f"{found.newest.isoformat() if found.newest else 'never'}"
            f"{f' ({human(found.age_s)} ago)' if found.age_s is not None else ''}, "
            f"limit {human(found.max_age_s)}")
