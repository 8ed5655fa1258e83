"""`atb tests heartbeat`: the application's liveness row, written or judged by its age."""

from __future__ import annotations

import click

from backup_core.ops import heartbeat
from backup_core.tools.durations import human, human_time
from drills.cli import output
from drills.cli.params import EXIT_CODES, conn, database_url_option, json_option


@click.group("tests", epilog=EXIT_CODES)
def tests_group() -> None:
    """Application probes used by monitoring."""


@tests_group.command("heartbeat", epilog=EXIT_CODES)
@database_url_option()
@click.option("--table", default=heartbeat.DEFAULT_TABLE,
              help="The application's SystemEvent table (columns type, message, created_at). "
                   f"Left at its default, atb's own {heartbeat.ATB_TABLE} is used where the "
                   "application has no such table.")
@click.option("--init", is_flag=True,
              help=f"Create atb's own heartbeat table {heartbeat.ATB_TABLE} (schema "
                   f"{heartbeat.ATB_SCHEMA}) for an application without an events table, and "
                   "print the GRANT the backup role needs; then schedule `atb tests heartbeat`.")
@click.option("--grant-to", metavar="ROLE",
              help="With --init: the backup role, given read access to atb's table.")
@click.option("--check", is_flag=True,
              help="Insert nothing; exit 1 when the newest heartbeat is older than --max-age.")
@click.option("--max-age", default="15m", help="With --check: the oldest acceptable heartbeat.")
@json_option
def heartbeat_cmd(database_url: str, table: str, init: bool, grant_to: str | None, check: bool,
                  max_age: str, as_json: bool) -> None:
    """Insert a heartbeat row (type TEST, message Heartbeat), check the newest one's age, or
    (--init) create atb's own heartbeat table."""
    if grant_to and not init:
        raise click.UsageError("--grant-to goes with --init")
    if init and (check or table != heartbeat.DEFAULT_TABLE):
        raise click.UsageError("--init creates atb's own table: it takes no --check or --table")
    if init:
        done = heartbeat.init_heartbeat(conn(database_url), grant_to=grant_to)
        output.show(done, as_json=as_json, text=_init_text)
        return
    if not check:
        beat = heartbeat.beat(conn(database_url), table=table)
        # `inserted_at` as before atb's own table existed: scripts read it
        output.show({"inserted_at": beat.at, "table": beat.table}, as_json=as_json,
                    text=lambda _: f"heartbeat inserted into {beat.table} at "
                                   f"{human_time(beat.at)}")
        return
    found = heartbeat.check_heartbeat(conn(database_url), table=table, max_age=max_age)
    output.show(found, as_json=as_json, text=_age_text)
    if not found.ok:
        raise SystemExit(1)


def _init_text(done: heartbeat.HeartbeatInit) -> str:
    lines = [f"{'created' if done.created else 'already there:'} {done.table}"]
    if done.granted_to:
        lines.append(f"granted to {done.granted_to}: {done.grant}")
    else:
        lines.append(f"the backup role needs (run as the table's owner): {done.grant}")
    lines.append("next: schedule `atb tests heartbeat` every 5 minutes (deploy/crontab.example)")
    return "\n".join(lines)


def _age_text(found: heartbeat.HeartbeatAge) -> str:
    return (f"{'OK' if found.ok else 'STALE'}: newest heartbeat in {found.table} "
            f"{human_time(found.newest) if found.newest else 'never'}"
            f"{f' ({human(found.age_s)} ago)' if found.age_s is not None else ''}, "
            f"limit {human(found.max_age_s)}")
