"""`atb db backup`: one consistent, atomic, self-describing `pg_dump -Fc` backup.

The dump, the row counts and the schema inventory are all taken in one exported snapshot, so
a later restore can be checked against exactly what the dump contains. Bytes are hashed as
they stream from pg_dump; the file appears under its final name only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql

from backup_core import __version__
from backup_core.ops import roles
from backup_core.reading import inventory
from backup_core.store.catalog import CLOCK_SKEW
from backup_core.store.manifest import Inventory, Manifest, write_manifest
from backup_core.store.naming import backup_path, dir_name, manifest_path, partial_path, roles_path
from backup_core.tools import childenv, compression, db, probes, toolchain
from backup_core.tools.commands import pg_restore_list_argv
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.durations import human
from backup_core.tools.errors import AtbError, CommandFailed, ConfigError, StorageError
from backup_core.tools.fsutil import (
    FILE_MODE,
    fsync_dir,
    kill_point,
    make_tree,
    publish,
    storage_error,
    write_private,
)
from backup_core.tools.locking import DatabaseLock
from backup_core.tools.runner import first_error_line, run, spawn

log = logging.getLogger("atb.backup")
CHUNK = 1 << 20

# phase, bytes done so far
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest


@dataclass
class _Snapshot:
    """Everything learned from the source inside the dump's snapshot."""

    row_counts: dict[str, int]
    row_checksums: dict[str, str]
    inventory: Inventory
    definitions: dict[str, str]
    conditions: dict[str, list[str]]
    alembic_revision: str | None


def lock_path(backup_dir: Path, dbname: str) -> Path:
    return backup_dir / dir_name(dbname) / ".lock"


def check_at(at: datetime, now: datetime) -> datetime:
    """`--at` as a UTC second, refused when a wrong clock or a typo would mis-file it."""
    at = at.astimezone(UTC).replace(microsecond=0)
    if at.year < 1970:
        raise ConfigError(f"--at {at.isoformat()} is before 1970: give the time the backup "
                          "really stands for")
    if at > now + CLOCK_SKEW:
        raise ConfigError(f"--at {at.isoformat()} is in the future (now {now:%Y-%m-%dT%H:%M:%SZ}):"
                          " a backup cannot stand for data not yet written")
    return at


@dataclass(frozen=True)
class _Named:
    """The exported snapshot and what the server's clock said when it was taken."""

    final: Path
    taken: datetime
    snapshot: str
    server_at: datetime
    skew_s: float


def _snapshot_and_name(conn: psycopg.Connection[Any], backup_dir: Path, *, dbname: str,
                       at: datetime | None, clock: Callable[[], datetime]) -> _Named:
    """Export the dump's snapshot and name the backup by the second the *server's* clock
    gives it (a backup host with a wrong clock must not file today's dump under last
    year). Without `--at`, a run that follows another within the same second (both waited
    for the lock) takes a new snapshot in the next second instead of colliding."""
    while True:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot(), now(), clock_timestamp()").fetchone()
        assert row is not None
        local = clock()
        server_at = row[1].astimezone(UTC)
        skew = round((local - row[2]).total_seconds(), 3)
        taken = at if at is not None else server_at.replace(microsecond=0)
        final = backup_path(backup_dir, dbname, taken)
        # a run killed after publishing its roles or manifest left them under this name
        taken_by = next((f for f in (final, manifest_path(final), roles_path(final))
                         if f.exists()), None)
        if taken_by is None:
            return _Named(final, taken, str(row[0]), server_at, skew)
        conn.rollback()
        if at is not None:
            raise StorageError(f"{taken_by} already exists; a backup is never overwritten")
        time.sleep(1.0 - server_at.microsecond / 1e6 + 0.01)


def warn_clock(skew_s: float, server_at: datetime) -> None:
    """Say loudly when this host's clock is more than `CLOCK_SKEW` off the server's."""
    if abs(skew_s) > CLOCK_SKEW.total_seconds():
        local = server_at + timedelta(seconds=skew_s)
        log.warning("this host's clock says %s but the database server's says %s (%s %s): "
                    "the backup is named by the server's clock; fix this host's clock (NTP)",
                    f"{local:%Y-%m-%dT%H:%M:%SZ}", f"{server_at:%Y-%m-%dT%H:%M:%SZ}",
                    human(abs(skew_s)), "ahead" if skew_s > 0 else "behind")


def create_backup(
    source: ConnInfo,
    backup_dir: Path,
    *,
    at: datetime | None = None,
    row_counts: str = "checksum",
    wait: bool = False,
    chains: list[toolchain.Toolchain] | None = None,
    progress: Progress | None = None,
    count_workers: int | None = None,
    clock: Callable[[], datetime] | None = None,
    compress: str | None = None,
) -> BackupResult:
    """Dump `source` into `backup_dir`; raise an `AtbError` and leave no file on failure.

    `clock` is this host's clock (injectable so a test can set it wrong); the backup's name
    and times come from the server's. `compress` is a `--compress` spec; None takes the
    fastest method this pg_dump writes and the runbook's pg_restore (the server's major)
    reads (`compression.default_for`)."""
    clock = clock or (lambda: datetime.now(UTC))
    wanted = compression.parse(compress) if compress is not None else None
    if row_counts not in inventory.ROW_COUNT_MODES:
        raise ConfigError(f"--row-counts must be one of {', '.join(inventory.ROW_COUNT_MODES)}")
    report = progress or (lambda phase, done: None)
    if at is not None:
        at = check_at(at, clock())
    if not source.dbname:
        raise ConfigError(f"{source.redacted} names no database: add /dbname to the URL")
    chains = toolchain.discover() if chains is None else chains
    report("connect", 0)
    with db.connect(source) as conn:
        server = db.server_version(conn)
        chain = toolchain.for_dump(int(server.split(".")[0]), chains)
        packing = _compression(chain, wanted, runbook_major=int(server.split(".")[0]))
        origin = db.source_id(conn)
        conn.rollback()
        lock = lock_path(backup_dir, source.dbname)
        make_tree(backup_dir, lock.parent)
        with DatabaseLock(lock, wait=wait):
            named = _snapshot_and_name(conn, backup_dir, dbname=source.dbname, at=at,
                                       clock=clock)
            warn_clock(named.skew_s, named.server_at)
            make_tree(backup_dir, named.final.parent)
            return _backup_locked(_Job(
                source=source, conn=conn, chain=chain, server=server, named=named,
                origin=origin, row_counts=row_counts, report=report, compression=packing,
                workers=count_workers or min(4, os.cpu_count() or 2)))


def _compression(chain: toolchain.Toolchain, wanted: compression.Compression | None, *,
                 runbook_major: int) -> compression.Compression:
    """The compression given (refused before any work when this pg_dump cannot write it or
    the runbook cannot read it), else the default for this pg_dump and runbook."""
    if wanted is None:
        choice = compression.default_for(chain, runbook_major)
        log.debug("compression %s: %s", choice.compression, choice.why)
        return choice.compression
    compression.check_usable(wanted, chain, runbook_major)
    return wanted


@dataclass(frozen=True)
class _Job:
    """One backup under the lock: what is dumped, by which pg_dump, read how."""

    source: ConnInfo
    conn: psycopg.Connection[Any]  # holds the exported snapshot until the dump is done
    chain: toolchain.Toolchain
    server: str
    named: _Named
    origin: str
    row_counts: str
    report: Progress
    workers: int
    compression: compression.Compression


@dataclass(frozen=True)
class _Files:
    """The three files of a backup, each written under a partial name and then published."""

    final: Path
    partial: Path
    manifest_final: Path
    manifest_partial: Path
    roles_final: Path
    roles_partial: Path

    @classmethod
    def for_backup(cls, final: Path) -> _Files:
        tag = f"{os.getpid()}-{os.urandom(3).hex()}"
        manifest_final, roles_final = manifest_path(final), roles_path(final)
        suffix = tag.rsplit("-", 1)[-1]
        return cls(final=final, partial=partial_path(final, tag),
                   manifest_final=manifest_final,
                   manifest_partial=partial_path(manifest_final, suffix),
                   roles_final=roles_final, roles_partial=partial_path(roles_final, suffix))

    @contextlib.contextmanager
    def all_or_nothing(self) -> Iterator[_Files]:
        """No partial file survives; and unless the dump itself was published (the last
        step), neither does a published manifest or roles file: a failed or interrupted
        backup leaves nothing that looks like a backup."""
        try:
            yield self
        except BaseException:
            if not self.final.exists():
                self.manifest_final.unlink(missing_ok=True)
                self.roles_final.unlink(missing_ok=True)
            raise
        finally:
            for path in (self.partial, self.manifest_partial, self.roles_partial):
                path.unlink(missing_ok=True)

    def publish(self, manifest: Manifest) -> None:
        """Manifest and roles first, the dump last: its name appearing means complete."""
        write_manifest(self.manifest_partial, manifest)
        kill_point("backup-manifest-written")
        publish(self.roles_partial, self.roles_final)
        kill_point("backup-roles-published")
        publish(self.manifest_partial, self.manifest_final)
        kill_point("backup-manifest-published")
        publish(self.partial, self.final)
        kill_point("backup-dump-published")
        fsync_dir(self.final.parent)


class _SnapshotReader:
    """Reads row counts and the schema in the dump's snapshot on a thread while pg_dump
    streams; a context manager, so the thread is joined however the backup ends."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._found: list[_Snapshot] = []
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._read, name="atb-snapshot-counts",
                                         daemon=True)

    def _read(self) -> None:
        job = self._job
        try:
            self._found.append(_describe_snapshot(job))
        except psycopg.Error as exc:
            self._errors.append(CommandFailed(
                f"reading row counts and schema in the dump's snapshot failed: "
                f"{redact(str(exc).strip().splitlines()[0])} (the backup user needs SELECT on "
                "every table and sequence; --row-counts off reads none of them); no backup "
                "was written"))
        except BaseException as exc:  # re-raised in the main thread
            self._errors.append(exc)

    def __enter__(self) -> _SnapshotReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=60)

    def failure(self) -> BaseException | None:
        """The reader's error once it is done (the root cause when pg_dump failed after it)."""
        self._thread.join()
        return self._errors[0] if self._errors else None

    def result(self) -> _Snapshot:
        failure = self.failure()
        if failure is not None:
            raise failure
        return self._found[0]


def _rollback(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


def _backup_locked(job: _Job) -> BackupResult:
    """Dump, check, keep the roles and publish, with every resource on one ExitStack so its
    teardown sees how the backup ended."""
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(_rollback, job.conn)
        files = stack.enter_context(_Files.for_backup(job.named.final).all_or_nothing())
        reader = stack.enter_context(_SnapshotReader(job))
        size, digest = _dump_into(job, files.partial, reader)
        job.report("check", size)
        toc = _toc_entries(job.chain, files.partial)
        job.report("roles", size)
        roles_text = roles.dump_roles(job.chain, job.source).encode()
        write_private(files.roles_partial, roles_text)
        snap = reader.result()
        manifest = _manifest(job, files, snap=snap, size=size, digest=digest, toc=toc,
                             roles_text=roles_text, elapsed=time.monotonic() - t0)
        job.report("publish", size)
        files.publish(manifest)
        log.debug("backup %s written (%d bytes, sha256 %s)", files.final, size, digest[:12])
        return BackupResult(path=files.final, manifest=manifest)


def _dump_into(job: _Job, partial: Path, reader: _SnapshotReader) -> tuple[int, str]:
    """pg_dump into `partial`; when it fails because our own snapshot reading failed first,
    that is the error a user needs."""
    try:
        dumped = _stream_dump(job, partial)
    except CommandFailed:
        failure = reader.failure()
        if failure is not None:
            raise failure from None
        raise
    kill_point("backup-dumped")
    return dumped


def _manifest(job: _Job, files: _Files, *, snap: _Snapshot, size: int, digest: str, toc: int,
              roles_text: bytes, elapsed: float) -> Manifest:
    """The backup's manifest; every recorded time is the server's clock."""
    named = job.named
    finished = named.server_at + timedelta(seconds=elapsed)
    return Manifest(
        database=job.source.dbname,
        file=files.final.name,
        taken_at=named.taken.isoformat(),
        started_at=named.server_at.replace(microsecond=0).isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"),
        duration_s=round(elapsed, 3),
        size_bytes=size,
        sha256=digest,
        pg_dump_version=job.chain.version,
        server_version=job.server,
        toc_entries=toc,
        alembic_revision=snap.alembic_revision,
        row_counts_mode=job.row_counts,
        row_counts=snap.row_counts,
        row_checksums=snap.row_checksums,
        inventory=snap.inventory,
        definitions=snap.definitions,
        definition_kinds=sorted(inventory.DEFINITION_KINDS),
        conditions=snap.conditions,
        roles={"file": files.roles_final.name,
               "sha256": hashlib.sha256(roles_text).hexdigest(),
               "size_bytes": len(roles_text)},
        source=job.source.redacted,
        source_id=job.origin,
        clock_skew_s=named.skew_s,
        tool_version=__version__,
        compression=job.compression.spec,
    )


def dump_argv(chain: toolchain.Toolchain, conninfo: str, snapshot: str,
              packing: compression.Compression) -> list[str]:
    """pg_dump's command line: a keyword conninfo without secrets, never a password."""
    return [chain.tool("pg_dump"), "--format=custom",
            compression.pg_dump_flag(packing, chain.major), f"--snapshot={snapshot}",
            "--no-password", f"--dbname={conninfo}"]


def _stream_dump(job: _Job, partial: Path) -> tuple[int, str]:
    """Run pg_dump to stdout, hashing and writing each chunk; returns (size, sha256)."""
    with childenv.for_tool(job.source) as (conninfo, tool_env), \
            tempfile.TemporaryFile() as errfile, _created(partial) as fd:
        proc = spawn(dump_argv(job.chain, conninfo, job.named.snapshot, job.compression),
                     what="pg_dump", env=tool_env, stdout=subprocess.PIPE, stderr=errfile)
        with proc:
            try:
                size, digest = _copy_hashed(proc, fd, path=partial, report=job.report)
                returncode = proc.wait()
                os.fsync(fd)
            except BaseException:
                proc.kill()
                raise
        if returncode != 0:
            errfile.seek(0)
            stderr = redact(errfile.read().decode(errors="replace"))
            raise CommandFailed(f"pg_dump failed: {first_error_line(stderr)}; no backup was "
                                "written", detail=stderr)
    return size, digest


@contextlib.contextmanager
def _created(path: Path) -> Iterator[int]:
    """A new private file (never an existing one), open for writing, closed on exit."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        raise storage_error(exc, path.parent) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _copy_hashed(proc: subprocess.Popen[bytes], fd: int, *, path: Path,
                 report: Progress) -> tuple[int, str]:
    assert proc.stdout is not None
    digest = hashlib.sha256()
    size = 0
    report("dump", 0)
    out_fd = proc.stdout.fileno()
    while chunk := os.read(out_fd, CHUNK):
        digest.update(chunk)
        _write_all(fd, chunk, path)
        size += len(chunk)
        report("dump", size)
    return size, digest.hexdigest()


def _write_all(fd: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as exc:
            raise storage_error(exc, path.parent) from exc
        view = view[written:]


def _toc_entries(chain: toolchain.Toolchain, path: Path) -> int:
    out = run(pg_restore_list_argv(chain, path), what="pg_restore --list").stdout
    return sum(1 for ln in out.splitlines() if ln.strip() and not ln.startswith(";"))


def _describe_snapshot(job: _Job) -> _Snapshot:
    """Inventory and counts on connections that import the snapshot; the exporting
    connection stays untouched, since any error on it would abort the snapshot for pg_dump."""
    source, snapshot, mode, workers = (job.source, job.named.snapshot, job.row_counts,
                                       job.workers)

    def in_snapshot() -> psycopg.Connection[Any]:
        c = db.connect(source, autocommit=True)
        inventory.stabilise_output(c)
        c.autocommit = False
        c.isolation_level = IsolationLevel.REPEATABLE_READ
        c.read_only = True
        c.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        return c

    with in_snapshot() as conn:
        inv, defs = inventory.catalogs(conn, content=mode == "checksum")  # one pipeline
        found = probes.conditions(conn) if mode != "off" else {}  # off: read no table
        revision = inventory.alembic_revision(conn)
        tables = inventory.user_tables(conn)
        estimates = inventory.estimated_counts(conn) if mode == "estimate" else {}
    sums: dict[str, str] = {}
    if mode == "off":
        counts: dict[str, int] = {}
    elif mode == "estimate":
        counts = estimates
    else:
        counts, sums = inventory.table_contents([(s, t) for s, t, _ in tables], in_snapshot,
                                                workers=workers, checksums=mode == "checksum")
    return _Snapshot(row_counts=counts, row_checksums=sums, inventory=inv, definitions=defs,
                     conditions=found, alembic_revision=revision)


__all__ = ["AtbError", "BackupResult", "create_backup", "lock_path"]
