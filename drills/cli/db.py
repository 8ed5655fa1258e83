"""`atb db ...`: back up, list, verify, prune, restore, and judge the backup tree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from backup_core.store import catalog, catalog_cache, retention
from backup_core.store.naming import parse_stamp, printable
from backup_core.tools.durations import human, human_time, plural
from drills import console
from drills.cli import output
from drills.cli.params import (
    DAYS,
    EXIT_CODES,
    backup_dir_option,
    conn,
    database_url_option,
    days,
    json_option,
    production,
    rel,
    signer_needs_repo,
)
from drills.cli.publish import notify_option

if TYPE_CHECKING:
    from datetime import datetime

    from backup_core.ops import backup, restore
    from backup_core.ops.health import HealthReport
    from backup_core.reading import forecast

# Each command imports the core it calls when it runs: `atb db list` over 50,000 backups is
# a user's wait, and importing backup, restore, verify, health and the off-site store for it
# cost a tenth of a second of it.

log = logging.getLogger("atb.backup")

repo_option = click.option(
    "--repo", envvar="BACKUP_REPO", show_envvar=True, metavar="s3://BUCKET/PREFIX",
    help="An off-site repository in S3-compatible storage (pip install "
         "'atb-backup-drills[s3]'); endpoint, region and credentials come from the standard "
         "AWS configuration (AWS_ENDPOINT_URL, AWS_PROFILE, ...), never from the command line.")
# Reading, pruning and restoring name the repository on the command line: a BACKUP_REPO
# exported for the backup host's uploads never turns its `list` or `prune` to the repository.
repo_select_option = click.option(
    "--repo", metavar="s3://BUCKET/PREFIX",
    help="Work on this off-site repository instead of the backup tree (pip install "
         "'atb-backup-drills[s3]'; AWS configuration as for `db backup --repo`).")
repo_signer_option = click.option(
    "--repo-signer", envvar="ATB_REPO_SIGNER", show_envvar=True, metavar="PEM",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --repo: refuse, before downloading it, a backup whose manifest record this "
         "Ed25519 public key did not sign (push signs with ATB_SIGNING_KEY_FILE).")
encrypt_option = click.option(
    "--encrypt-to", envvar="BACKUP_ENCRYPT_TO", show_envvar=True, metavar="AGE_KEYS",
    help="Encrypt everything uploaded to these age public keys (age1..., comma separated); "
         "the host needs no private key.")


@click.group(epilog=EXIT_CODES)
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
@click.option("--compress", envvar="ATB_COMPRESS", show_envvar=True, metavar="METHOD",
              help="gzip:N (1-9), lz4, zstd:N (1-22) or none, recorded in the manifest.  "
                   "[default: the fastest this pg_dump writes and the runbook's pg_restore "
                   "reads: zstd:1 where both have it, else gzip:1; `atb doctor` shows it]")
@repo_option
@encrypt_option
@json_option
def db_backup(database_url: str, backup_dir: Path, at: str | None, row_counts: str, wait: bool,
              compress: str | None, repo: str | None, encrypt_to: str | None,
              as_json: bool) -> None:
    """Write BACKUP_DIR/<db>/<YYYY>/<MM>/<DD>/backup-<timestamp>.dump and its manifest; with
    --repo, then upload it (and any earlier backup the repository lacks)."""
    from backup_core.ops import backup, offsite

    if repo:  # configuration checked before the dump starts
        from backup_core.store import repository, sealing

        repository.RepoUrl.parse(repo)
        sealing.recipients(encrypt_to or "")
    progress = console.Progress("backup")
    try:
        result = backup.create_backup(conn(database_url), backup_dir,
                                      at=parse_stamp(at) if at else None, row_counts=row_counts,
                                      wait=wait, progress=progress, compress=compress)
    finally:
        progress.close()
    log.info("backup %s written (%s, sha256 %s)", result.path,
             console.size(result.manifest.size_bytes), result.manifest.sha256[:12])
    if repo:
        pushed = offsite.push(repo, backup_dir, encrypt_to=encrypt_to,
                              database=result.manifest.database)
        log.info("%d backup(s) uploaded to %s", pushed.uploaded, pushed.repository)
    output.show(result, as_json=as_json, text=_backup_text)


@db.command("push", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--repo", envvar="BACKUP_REPO", show_envvar=True, metavar="s3://BUCKET/PREFIX",
              required=True, help="The off-site repository (see `atb db backup --repo`).")
@encrypt_option
@click.option("--database", metavar="NAME", help="Only this database's backups.")
@json_option
def db_push(backup_dir: Path, repo: str, encrypt_to: str | None, database: str | None,
            as_json: bool) -> None:
    """Upload every sound local backup the repository lacks: dump, roles, then the manifest
    last. Idempotent and resumable (an interrupted upload is never visible and is redone),
    safe to run from cron."""
    from backup_core.ops import offsite

    progress = console.Progress("upload")
    try:
        report = offsite.push(repo, backup_dir, encrypt_to=encrypt_to, database=database,
                              progress=lambda done: progress("upload", done))
    finally:
        progress.close()
    output.show(report, as_json=as_json, text=lambda r: "\n".join(
        [f"{'uploaded' if p.uploaded else 'present '} {p.key}" for p in r.pushed]
        + [f"not pushed (not a sound backup): {printable(p)}" for p in r.skipped]
        + [f"{r.uploaded} uploaded, {len(r.pushed) - r.uploaded} already in {r.repository}"]))


def _backup_text(result: backup.BackupResult) -> str:
    m = result.manifest
    return (f"{result.path}\n  {console.size(m.size_bytes)} in {human(m.duration_s)}, "
            f"sha256 {m.sha256[:16]}…, {len(m.row_counts)} tables counted ({m.row_counts_mode})"
            f", alembic {m.alembic_revision or '-'}, {m.compression or 'gzip:6'}, "
            f"pg_dump {m.pg_dump_version} "
            f"/ server {m.server_version}")


@db.command("list", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--database", metavar="NAME", help="Only this database's backups.")
@repo_select_option
@json_option
def db_list(backup_dir: Path, database: str | None, repo: str | None, as_json: bool) -> None:
    """List backups newest first; partial, stray and manifest-less files are shown as such.
    With --repo, the repository's backups (keys relative to its prefix)."""
    if repo:
        from backup_core.ops import offsite

        items = offsite.listing(repo, database)
    else:
        items = catalog.listing(backup_dir, database, cache_dir=catalog_cache.default_dir())
    root = Path(".") if repo else backup_dir
    of = f"of database {printable(database)} " if database else ""
    output.show(items, as_json=as_json, text=lambda found: _list_text(
        found, root, where=of + (f"in {repo}" if repo else f"under {backup_dir}")))


def _list_text(items: tuple[catalog.Listed, ...], backup_dir: Path, *, where: str) -> str:
    """The table of `atb db list`, built column by column (50,000 rows are a user's wait:
    each column is one comprehension, with no call per cell that could be made once)."""
    if not items:
        return f"no backups {where}"
    size, complete = console.size, catalog.COMPLETE
    headers = ["taken (UTC)", "age", "size", "alembic", "state"]
    columns = [[_taken(b.taken_at) for b in items],
               [human(b.age_s) if b.age_s is not None else "-" for b in items],
               [size(b.size_bytes) for b in items],
               [printable(b.alembic_revision or "-") for b in items],
               [b.checked if b.backup.state == complete else b.state for b in items]]
    if len({b.backup.manifest.source_id for b in items if b.backup.manifest is not None}) > 1:
        # backups of several servers: which one each came from (they never cover each other)
        headers.append("source")
        columns.append([printable(b.backup.manifest.source_id or "unknown")
                        if b.backup.manifest else "-" for b in items])
    if len({b.database for b in items}) > 1:
        headers.append("database")
        columns.append([printable(b.database) for b in items])
    headers.append("path")
    columns.append([rel(b.path, backup_dir)
                    + (f"  ({printable(b.problem)})" if b.problem else "") for b in items])
    return output.aligned(headers, columns)


def _taken(at: datetime | None) -> str:
    """`%Y-%m-%d %H:%M:%SZ` of `at` (its own fields, as strftime writes them), without
    strftime's cost for the years it pads the same way."""
    if at is None:
        return "-"
    if at.year >= 1000:
        return at.isoformat(" ", "seconds")[:19] + "Z"
    return at.strftime("%Y-%m-%d %H:%M:%SZ")


@db.command("verify", epilog=EXIT_CODES)
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@backup_dir_option
@click.option("--latest", is_flag=True, help="Verify the newest backup.")
@click.option("--all", "all_", is_flag=True, help="Verify every backup.")
@click.option("--database", metavar="NAME", help="With --latest/--all: only this database.")
@click.option("--deep", is_flag=True,
              help="Also read every data block (pg_restore -f /dev/null), not just the TOC.")
@repo_select_option
@json_option
def db_verify(path: Path | None, backup_dir: Path, latest: bool, all_: bool,
              database: str | None, deep: bool, repo: str | None, as_json: bool) -> None:
    """Check size and sha256 against the manifest and parse the TOC with pg_restore --list.

    With --repo, PATH is a key as `list --repo` shows it: each object is downloaded into a
    private directory (decrypted with ATB_AGE_IDENTITY_FILE), its stored and plaintext
    sha256 proven, then verified the same way. One line per file; exits 1 if any fails.
    """
    from backup_core.ops import offsite, verify

    if repo:
        report = offsite.verify_remote(repo, key=str(path) if path else None, latest=latest,
                                       all_=all_, database=database, deep=deep)
    else:
        progress = console.Progress("verify")
        try:
            report = verify.verify_selected(backup_dir, path=path, latest=latest, all_=all_,
                                            database=database, deep=deep,
                                            progress=progress if progress.tty else None)
        finally:
            progress.close()
    for r in report.results:
        if r.not_recorded:  # the verdict stands; `list` will not show it
            log.warning("the verdict on %s was not recorded beside it (list still shows it "
                        "unverified): %s", printable(str(r.path)), printable(r.not_recorded))
    output.show(report.results, as_json=as_json, text=lambda results: "\n".join(
        f"{'OK  ' if r.ok else 'FAIL'} {printable(str(r.path))}"
        + ("" if r.ok else f": {printable(r.reason)}") for r in results))
    if not report.ok:
        raise SystemExit(1)


@db.command("prune", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--retention-days", envvar="BACKUP_RETENTION_DAYS", show_envvar=True, default=7.0,
              type=DAYS, callback=days, help="Delete backups older than this many days.")
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
@repo_select_option
@json_option
def db_prune(backup_dir: Path, retention_days: float, keep_last: int, keep_daily: int,
             keep_weekly: int, keep_monthly: int, dry_run: bool, repo: str | None,
             as_json: bool) -> None:
    """Delete expired sound backups (dump and sidecars together) and empty date directories.

    Only sound backups are ever deleted, each covered by newer sound backups of the same
    server and database; anything else is kept with its reason. The newest drill-verified
    backup and a backup in progress are never deleted. A tree that looks wrong (BACKUP_DIR
    one level too high, most backups not sound, a clock behind the backups) is refused
    whole (exit 8).
    """
    policy = retention.Policy(retention_days, keep_last, keep_daily, keep_weekly, keep_monthly)
    if repo:  # the same plan and floors over the repository's catalog
        from backup_core.ops import offsite

        report = offsite.prune_remote(repo, policy, dry_run=dry_run)
    else:
        report = retention.prune(backup_dir, policy, dry_run=dry_run,
                                 cache_dir=catalog_cache.default_dir())
    root = Path(".") if repo else backup_dir
    output.show(report, as_json=as_json, text=lambda r: _prune_text(r, root))


def _prune_text(report: retention.PruneReport, backup_dir: Path) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"{'keep  ' if d.keep else verb:<12} {rel(d.backup.path, backup_dir)}  "
             f"({printable('; '.join(d.reasons))})" for d in report.decisions]
    return "\n".join([*lines, f"{len(report.keep)} kept, {len(report.delete)} {verb}"])


@db.command("restore", epilog=EXIT_CODES)
@click.argument("path", type=click.Path(dir_okay=False))  # as typed: `s3://` keeps its slashes
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
              help="With --migrate: the application's alembic.ini (relative to --app-dir); "
                   "with --migrate-cmd, used only when given.  [default: alembic.ini]")
@click.option("--migrate-cmd", metavar="CMD",
              help="Migrate with the application's own command instead (implies --migrate), "
                   "run isolated in --app-dir with the copy in DATABASE_URL.")
@click.option("--app-python", type=click.Path(dir_okay=False), metavar="PATH",
              help="The application's interpreter: Alembic runs as its `-m alembic`.  "
                   "[default: $VIRTUAL_ENV's, else atb's]")
@click.option("--app-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The application's working directory.  [default: the current one]")
@click.option("--app-url-env", "app_url_env", multiple=True, metavar="NAME",
              help="Also give the copy's URL under this variable (repeatable).")
@click.option("--pass-env", "pass_env", multiple=True, metavar="NAME",
              help="A variable the migration also gets (repeatable); one naming production "
                   "is refused.")
@click.option("--production-url", envvar="DATABASE_URL", show_envvar=True, metavar="URL",
              help="The live database, which restore refuses to overwrite.")
@click.option("--i-know-this-is-production", "allow_production", is_flag=True,
              help="Allow restoring into the DATABASE_URL database itself.")
@repo_select_option
@repo_signer_option
@json_option
def db_restore(path: str, target_url: str, jobs: int | None, clean: bool, with_roles: bool,
               no_owner: bool,
               migrate: bool, alembic_config: Path | None, migrate_cmd: str | None,
               app_python: str | None, app_dir: Path | None, app_url_env: tuple[str, ...],
               pass_env: tuple[str, ...], production_url: str | None,
               allow_production: bool, repo: str | None, repo_signer: Path | None,
               as_json: bool) -> None:
    """Restore PATH into exactly the target database (fresh database, pg_restore, migrate).

    With --repo, PATH is a key as `list --repo` shows it: the backup is downloaded into a
    private directory, its hashes proven and decrypted (ATB_AGE_IDENTITY_FILE) before
    anything is restored, and the download removed after."""
    from backup_core.ops import offsite, restore
    from backup_core.ops.migrate import Migration
    from backup_core.tools import extras
    from backup_core.tools.appenv import AppEnv, check_url_env, interpreter_path
    from backup_core.tools.childenv import check_pass_env

    signer_needs_repo(repo, repo_signer)
    if not (migrate or migrate_cmd):  # a migration option alone would be ignored in silence
        given = [name for name, value in (
            ("--alembic-config", alembic_config), ("--app-python", app_python),
            ("--app-dir", app_dir), ("--app-url-env", app_url_env), ("--pass-env", pass_env))
            if value]
        if given:
            raise click.UsageError(f"{given[0]} needs --migrate (or --migrate-cmd): without "
                                   "it nothing is migrated")
    live = production(production_url)
    target = conn(target_url, "ATB_TARGET_URL").with_password_from(live)
    app = AppEnv(directory=(app_dir or Path.cwd()).absolute(),
                 python=interpreter_path(app_python) if app_python else None,
                 url_env=check_url_env(app_url_env), pass_env=check_pass_env(pass_env),
                 dialect=live.dialect if live else "")
    if migrate and not migrate_cmd and not app_python:  # Alembic in atb's own environment
        extras.require("drill", what="restore --migrate")
    ini = alembic_config or (None if migrate_cmd else Path("alembic.ini"))
    migration = Migration(app, alembic_config=ini, command=migrate_cmd) \
        if migrate or migrate_cmd else None

    def request(dump: Path) -> restore.RestoreRequest:
        return restore.RestoreRequest(
            dump, target, production=live, allow_production=allow_production, clean=clean,
            jobs=jobs, no_owner=no_owner, with_roles=with_roles, migration=migration)

    progress = console.Progress("restore")
    shown = progress if progress.tty else None  # nothing extra in a log
    try:
        if repo:
            with offsite.downloaded(repo, path, signer=repo_signer, progress=None
                                    if shown is None else lambda n, _: shown("download", n),
                                    ) as got:
                result = restore.restore_backup(request(got.path), progress=shown)
        else:
            result = restore.restore_backup(request(Path(path)), progress=shown)
    finally:
        progress.close()
    output.show(result, as_json=as_json, text=lambda r: _restore_text(r, path))


def _restore_text(result: restore.RestoreResult, path: str) -> str:
    lines = [f"restored {printable(path)} into {result.target} in {human(result.duration_s)} "
             f"(pg_restore {result.pg_restore_version}, {result.jobs} jobs"
             f"{', database created' if result.created else ''})"]
    if result.migrate:
        m = result.migrate
        lines.append(f"alembic: {m.before or '-'} -> {m.after or '-'} in {human(m.duration_s)} "
                     f"(script head {', '.join(m.heads) or 'not known'})")
        who = "alembic" if m.command.startswith("alembic ") else f"`{printable(m.command)}`"
        lines.append(f"{who} ran {m.isolation}")
    return "\n".join(lines + [f"guard: {line}" for line in result.guard])


@db.command("status", epilog=EXIT_CODES)
@backup_dir_option
@click.option("--database", metavar="NAME", help="Only this database.  [default: every one]")
@click.option("--schedule", default="1h", help="How often backups should run.")
@click.option("--rpo", default="15m", help="Recovery point objective: the most data you may lose.")
@click.option("--window", default="7d", help="How far back to look for gaps between backups.")
@click.option("--rto-target", default="1h",
              help="Recovery time objective the RTO forecast is judged against.")
@click.option("--forecast-rto", is_flag=True,
              help="Exit 1 when the RTO forecast (from the drills' restore times against "
                   "archive size, for the newest backup and for the size trend 90 days on) "
                   "passes 80 % of --rto-target.")
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
@repo_option
@click.option("--offsite-lag", default="1h",
              help="With --repo: how long the newest sound local backup may wait to be "
                   "off-site.")
@click.option("--max-drill-age", default="92d",
              help="The drill policy: a passing drill at least this often; older, status says "
                   "so and --notify tells (the exit code judges the backups alone).")
@notify_option
@json_option
def db_status(backup_dir: Path, database: str | None, schedule: str, rpo: str, window: str,
              rto_target: str, forecast_rto: bool, prom_file: Path | None, stanza: str | None,
              pgbackrest_config: Path | None, database_url: str | None, repo: str | None,
              offsite_lag: str, max_drill_age: str, notify_urls: tuple[str, ...],
              as_json: bool) -> None:
    """Newest backup's age and the largest gap vs the schedule and RPO (and, with --stanza,
    WAL archiving's lag; with --repo, whether the newest backup is off-site; with
    --forecast-rto, the RTO forecast); exits 1 on a miss."""
    from backup_core.ops.health import Targets, check_health
    from backup_core.pitr.pgbackrest import Stanza
    from backup_core.tools import notify
    from drills.alerts import overdue_notices

    urls = notify.check_targets(notify_urls)
    report = check_health(backup_dir, Targets(schedule, rpo, window,
                                              max_drill_age=max_drill_age, rto=rto_target),
                          database=database,
                          stanza=Stanza(stanza, pgbackrest_config) if stanza else None,
                          server_url=database_url, prometheus=prom_file, repo=repo,
                          offsite_lag=offsite_lag, forecast_rto=forecast_rto)
    if as_json:  # with --stanza/--repo/--forecast-rto an object; else the databases alone
        output.print_json({"databases": report.databases, "stanzas": report.stanzas,
                           "offsite": report.offsite, "forecasts": report.forecasts}
                          if stanza or repo or forecast_rto else report.databases)
    else:
        click.echo(_status_text(report))
    for notice in overdue_notices(report.databases):
        notify.send(urls, notice)  # never raises: the status stands
    if not report.ok:
        raise SystemExit(1)


def _status_text(report: HealthReport) -> str:
    lines: list[str] = []
    for o in report.offsite:
        lines += _judged(f"{printable(o.database)} off-site in {o.repository}: newest local "
                         f"backup {o.newest_local} "
                         + ("is there" if o.offsite else f"not there for {human(o.lag_s)}"),
                         () if o.ok else (f"not off-site within {human(o.max_lag_s)}",),
                         "off-site within the bound")
    for a in report.stanzas:
        lines += _judged(f"stanza {a.stanza}: {plural(a.backups, 'backup')} (newest "
                         f"{a.newest_backup or '-'}), last WAL archived "
                         f"{a.last_archived_wal or '-'} ({human(a.lag_s)} ago), point-in-time "
                         f"window {human(a.window_s)}", a.missed,
                         f"archiving is current within the RPO of {human(report.rpo_s)}")
    for s in report.databases:
        per_source = "".join(f"\n  {plural(n, 'backup')} of {printable(src)}"
                             for src, n in s.sources.items()) if len(s.sources) > 1 else ""
        lines += _judged(f"{printable(s.database)}: {plural(s.backups, 'complete backup')}, "
                         f"newest {human_time(s.newest)} ({human(s.newest_age_s)} ago), "
                         f"largest gap in the last {s.window_days:g} days: "
                         f"{human(s.largest_gap_s)}, last passing drill "
                         f"{human_time(s.last_drill_passed)}" + per_source,
                         tuple(printable(m) for m in s.missed), "schedule and RPO targets met")
        if s.drill_overdue:
            lines.append(f"  DRILL OVERDUE: {printable(s.drill_overdue)}")
    lines += [_forecast_text(f, gate=report.gate) for f in report.forecasts]
    return "\n".join(lines)


def _forecast_text(f: forecast.RtoForecast, *, gate: bool) -> str:
    trend = ("" if f.trend_rto_s is None else
             f", {human(f.trend_rto_s)} in {f.horizon_days:g} days at the size trend "
             f"({console.size(int(f.growth_bytes_per_day or 0))}/day to "
             f"{console.size(f.trend_size_bytes or 0)})")
    passes = f"; passes 80 % of the target on {f.passes_on}" if f.passes_on else ""
    verdict = (("MISSED" if gate else "WARNING") + f": forecast passes 80 % of the RTO target "
               f"{human(f.target_s)}") if f.warning else f"OK: within 80 % of the RTO target " \
        f"{human(f.target_s)}"
    return (f"{printable(f.database)}: RTO forecast {human(f.newest_rto_s)} for the newest "
            f"backup ({console.size(f.newest_size_bytes)}){trend}; {f.model.how}: "
            f"{f.model.fixed_s:.1f}s + {f.model.per_gb_s:.1f}s/GB{passes}\n  {verdict}")


def _judged(headline: str, missed: tuple[str, ...], ok: str) -> list[str]:
    return [headline, *(f"  MISSED: {m}" for m in missed)] + ([] if missed else [f"  OK: {ok}"])
