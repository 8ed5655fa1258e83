"""Point-in-time recovery from pgBackRest into a throwaway cluster of ours.

The window a drill picks from runs from the oldest backup's stop time (within the window) to
the newest commit found in the archived WAL (read with pg_waldump, not guessed from file
times). The recovery runs in a fresh directory, socket only, archiving off; what the server
logged says how far it got, how much WAL it replayed and, when it stopped early, why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.pitr import pgbackrest
from backup_core.pitr.pgbackrest import BackupSet, Stanza, StanzaInfo
from backup_core.tools import db, removal
from backup_core.tools.cluster import (
    FAST_SETTINGS,
    Cluster,
    chown_tree_argv,
    point_in_time_account,
    servable,
    service_user,
)
from backup_core.tools.commands import pg_waldump_argv
from backup_core.tools.errors import AtbError, CommandFailed, ConnectionFailed
from backup_core.tools.runner import run
from backup_core.tools.toolchain import Toolchain

COMMIT_RE = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
RESTORED_RE = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
LAST_XACT_RE = re.compile(r"last completed transaction was at log time (\S+ \S+)")
REDO_START_RE = re.compile(r"redo starts at ([0-9A-F]+/[0-9A-F]+)")
REDO_DONE_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
LOG_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC ")
LOOKBACK_SEGMENTS = 16  # how far back from the newest segment to look for a commit
log = logging.getLogger("atb.pitr")


class RecoveryFailed(AtbError):
    """The copy did not recover to the target: `reason` says why, `segment` which WAL."""

    def __init__(self, message: str, *, segment: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, detail=log_tail)
        self.segment = segment
        self.log_tail = log_tail


@dataclass(frozen=True)
class Window:
    start: datetime  # the oldest backup's stop time within the window
    # the newest commit in the archived WAL, excluded: recovery to a time stops at the first
    # commit after it, so a target at or past the newest commit cannot be reached
    end: datetime
    backups: int


@dataclass(frozen=True)
class Recovery:
    target: datetime
    recovered_to: datetime | None  # the last transaction replayed
    wal_bytes: int
    segments: int
    restore_s: float  # pgBackRest's restore, the WAL fetched for the replay, the chown
    start_s: float  # server start to the first WAL record replayed
    replay_s: float  # first record to the promoted server accepting connections
    spool_bytes: int = 0  # the WAL fetched beforehand (disk the drill needed beside the copy)


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _pg_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace(" UTC", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def newest_commit(stanza: Stanza, info: StanzaInfo, chain: Toolchain) -> datetime:
    """The newest commit timestamp in the archive."""
    if info.wal_max is None:
        raise AtbError(f"stanza {stanza.name} has no archived WAL: is archive_command set "
                       "to `pgbackrest archive-push`?")
    run_as = service_user()
    waldump = servable(chain, run_as)  # the repository's WAL is parsed as its reader, not root
    segment = info.wal_max
    with tempfile.TemporaryDirectory(prefix="atb-wal-") as tmp:
        lock = Path(tmp) / "lock"
        lock.mkdir()
        if run_as:
            for path in (Path(tmp), lock):
                shutil.chown(path, run_as)
        for _ in range(LOOKBACK_SEGMENTS):
            dest = Path(tmp) / segment
            # pg_control from the config's pg1-path: the window is read before any copy
            # exists (on a host without the stanza's cluster, give --target-time)
            try:
                fetched = pgbackrest.fetch_segment(stanza, segment, dest, datadir=None,
                                                   lock_dir=lock, run_as=run_as)
            except CommandFailed as exc:  # most often: no cluster at the config's pg1-path
                raise CommandFailed(f"{exc}; the newest commit in the archive (the end of "
                                    "the window a random target is drawn from) is read with "
                                    "the config's pg1-path: give --target-time on a host "
                                    "without the stanza's cluster", detail=exc.detail) from exc
            if fetched:
                done = run(pg_waldump_argv(waldump, dest), what="pg_waldump", run_as=run_as,
                           check=False, timeout=300)
                commits = COMMIT_RE.findall(done.stdout)
                dest.unlink()
                if commits:
                    return _pg_time(commits[-1])
            if segment == info.wal_min:
                break
            segment = pgbackrest.previous_segment(segment)
    raise AtbError(f"no committed transaction in the newest {LOOKBACK_SEGMENTS} archived WAL "
                   f"segments of stanza {stanza.name} (up to {info.wal_max})")


def window(stanza: Stanza, info: StanzaInfo, chain: Toolchain, *, now: datetime,
           days: float) -> Window:
    since = now - timedelta(days=days)
    eligible = [b for b in info.backups if b.stopped >= since]
    if not eligible:
        raise AtbError(f"stanza {stanza.name} has no backup that finished in the last "
                       f"{days:g} days ({len(info.backups)} older)")
    end = newest_commit(stanza, info, chain)
    start = min(b.stopped for b in eligible)
    if end <= start:
        raise AtbError(f"stanza {stanza.name}: nothing committed after the oldest backup in the "
                       f"window stopped at {start.isoformat()}: the window is empty")
    return Window(start=start, end=end, backups=len(eligible))


def pick_target(w: Window, seed: int) -> datetime:
    """Uniform over the window, to the millisecond, reproducible from the seed."""
    span = (w.end - w.start).total_seconds()
    target = w.start + timedelta(seconds=random.Random(seed).random() * span)
    return target.replace(microsecond=target.microsecond // 1000 * 1000)


def prefetch_wal(stanza: Stanza, info: StanzaInfo, backup: BackupSet, target: datetime,
                 chain: Toolchain, spool: Path, *, datadir: Path, lock_dir: Path,
                 run_as: str | None, target_type: str = pgbackrest.TARGET_TYPE) -> int:
    """Fetch into `spool`, as `run_as` (the repository's reader), what the recovery of
    `backup` to `target` replays, as its restore_command would have one at a time: the
    timelines' history files, then each segment from the backup's first on, up to the first
    holding a commit after `target` (past the backup's last: where recovery to a time stops),
    the archive's last, or one the archive lacks (the recovery then stops there and
    `explain` names it). pgBackRest reads pg_control from `datadir`, the restored copy, as
    the copy's own restore_command would. A fetch that fails otherwise than for a file the
    archive lacks is a `RecoveryFailed` naming the file. The number of segments fetched.
    The stop rule holds for a time target only (`pgbackrest.TARGET_TYPE`): any other type
    is refused before anything is fetched."""
    if target_type != "time":
        raise ValueError(f"prefetch_wal stops at the first commit after a time; a "
                         f"{target_type!r} recovery target would need another stop rule")
    def fetch(name: str) -> bool:
        try:
            return pgbackrest.fetch_segment(stanza, name, spool / name, datadir=datadir,
                                            lock_dir=lock_dir, run_as=run_as)
        except CommandFailed as exc:
            # no `segment`: the drill reports that one as missing, and this one is not
            raise RecoveryFailed(f"could not fetch {name} from the archive: {exc}") from exc

    waldump = servable(chain, run_as)  # the repository's WAL is parsed as its reader, not root
    first = newest = int(backup.wal_stop[:8], 16)
    while fetch(f"{newest + 1:08X}.history"):  # as the server looks for the newest timeline
        newest += 1
    for tli in range(2, first + 1):
        fetch(f"{tli:08X}.history")
    history = spool / f"{newest:08X}.history"
    begins = (history_begins(history.read_text(errors="replace"), newest) if history.is_file()
              else {tli: 0 for tli in range(first, newest + 1)})
    # each segment under the timeline the server reads it from, as the newest history says
    number, fetched, current = (backup.wal_start or backup.wal_stop)[8:], 0, first
    while True:
        got = None
        for tli in timelines_for(segment_number(number), begins):
            if tli < current:  # the server never goes back to an older timeline
                break
            if fetch(f"{tli:08X}{number}"):
                got, current = f"{tli:08X}{number}", tli
                break
        if got is None:
            break
        fetched += 1
        if number >= backup.wal_stop[8:]:
            done = run(pg_waldump_argv(waldump, spool / got), what="pg_waldump",
                       run_as=run_as, check=False, timeout=300)
            if any(_pg_time(c) > target for c in COMMIT_RE.findall(done.stdout)):
                break
        if info.wal_max is None or number >= info.wal_max[8:]:
            break
        number = pgbackrest.next_segment(f"{first:08X}{number}")[8:]
    return fetched


def spool_of(datadir: Path) -> Path:
    """The WAL spool of a point-in-time copy: beside its data directory, in its work
    directory (root's, 0711)."""
    return datadir.parent / "wal"


def history_begins(text: str, tli: int) -> dict[int, int]:
    """Where (an LSN) each timeline of timeline `tli`'s history file begins, `tli` included:
    each line names a parent timeline and the LSN where it ended, where the next began."""
    begins, start = {}, 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#"):
            continue
        try:
            begins[int(fields[0])] = start
            start = lsn(fields[1])
        except ValueError as exc:
            raise RecoveryFailed(f"timeline {tli}'s history file in the archive is not one "
                                 f"PostgreSQL wrote: {line[:80]!r}") from exc
    begins[tli] = start
    return begins


def timelines_for(segno: int, begins: dict[int, int]) -> list[int]:
    """The timelines the server tries for WAL segment `segno` (a number, not a name), in its
    order (PostgreSQL's XLogFileReadAnyTLI): newest first, each only from the segment where
    it begins."""
    return sorted((tli for tli, start in begins.items()
                   if start // pgbackrest.SEGMENT_BYTES <= segno), reverse=True)


def segment_number(name: str) -> int:
    """The segment number of a WAL file name's last 16 digits (16 MB segments)."""
    per_log = 0x100000000 // pgbackrest.SEGMENT_BYTES
    return int(name[-16:-8], 16) * per_log + int(name[-8:], 16)


def backup_for(info: StanzaInfo, target: datetime) -> BackupSet:
    """The newest backup that finished before `target`: the least WAL to replay."""
    usable = [b for b in info.backups if b.stopped <= target]
    if not usable:
        raise AtbError(f"no backup of stanza {info.name} finished before {target.isoformat()}")
    return max(usable, key=lambda b: b.stopped)


@contextlib.contextmanager
def recovered(stanza: Stanza, info: StanzaInfo, backup: BackupSet, target: datetime,
              chain: Toolchain, *, timeout_s: float = 86400) -> Iterator[tuple[Cluster,
                                                                                Recovery]]:
    """A running copy of the stanza's cluster recovered to `target` and promoted, in a
    directory of ours; stopped and deleted on exit (Ctrl-C too)."""
    timings: dict[str, float] = {}

    reader = service_user()  # reads the repository: restores the files, fetches the WAL
    # The server runs as an account that owns nothing of production (`point_in_time_account`),
    # not as the repository's reader: the restored cluster's superuser (what the backup holds)
    # acts on the host's files as the server's account, and the repository, its spool and
    # its credentials stay out of its reach. So the files are restored as the reader, then
    # given to the server's account, with the WAL the recovery replays fetched beforehand
    # into a spool of its own that its restore_command copies from.
    account = point_in_time_account().name

    def populate(datadir: Path, run_as: str | None) -> None:
        t0 = time.monotonic()
        lock, spool = datadir.parent / "lock", spool_of(datadir)
        lock.mkdir()
        spool.mkdir(mode=0o700)
        if reader:
            for path in (lock, spool, datadir):
                shutil.chown(path, reader, pwd.getpwnam(reader).pw_gid)
        pgbackrest.restore(stanza, datadir, target=target, backup=backup.label, lock_dir=lock,
                           run_as=reader,
                           restore_command=pgbackrest.spool_restore_command(spool))
        fetched = prefetch_wal(stanza, info, backup, target, chain, spool, datadir=datadir,
                               lock_dir=lock, run_as=reader)
        timings["spool_bytes"] = sum(p.stat().st_size for p in spool.iterdir())
        log.info("WAL spool %s: %d files fetched (%d segments), %.1f MiB", spool,
                 len(list(spool.iterdir())), fetched, timings["spool_bytes"] / 2**20)
        if run_as:
            for path in (datadir, spool):
                run(chown_tree_argv(path, run_as), what="chown the restored files",
                    timeout=3600)
        timings["restore"] = time.monotonic() - t0

    settings = {**FAST_SETTINGS, "archive_mode": "off", "hot_standby": "off",
                "log_line_prefix": "%m [%p] ", "log_timezone": "UTC"}
    cluster = Cluster(chain, settings=settings, populate=populate, start_timeout=timeout_s,
                      run_as=account)
    t0 = time.monotonic()
    try:
        try:
            cluster.start()
        except CommandFailed as exc:
            if "restore" not in timings:
                raise
            raise explain(_read(cluster.logfile), info, target) from exc
        _wait_promoted(cluster, info, target, deadline=t0 + timeout_s)
        # promoted: the server reads no more WAL from the spool; its disk is given back now
        removal.discard(spool_of(cluster.datadir))  # the sandbox account's: no link followed
        text = _read(cluster.logfile)
        start, done = REDO_START_RE.search(text), REDO_DONE_RE.search(text)
        last = LAST_XACT_RE.search(text)
        recovery = Recovery(
            target=target,
            recovered_to=_pg_time(last.group(1)) if last else None,
            wal_bytes=lsn(done.group(1)) - lsn(start.group(1)) if start and done else 0,
            segments=len(set(RESTORED_RE.findall(text))),
            restore_s=round(timings["restore"], 3), spool_bytes=int(timings["spool_bytes"]),
            **_start_and_replay(text, time.monotonic() - t0 - timings["restore"]))
        yield cluster, recovery
    finally:
        cluster.destroy()


def _start_and_replay(server_log: str, total_s: float) -> dict[str, float]:
    """Split the time after the restore by the server's own log timestamps."""
    stamps: dict[str, datetime] = {}
    for line in server_log.splitlines():
        found = LOG_TIME_RE.match(line)
        if not found:
            continue
        at = datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC)
        stamps.setdefault("first", at)
        if "redo starts at" in line:
            stamps.setdefault("redo", at)
        if "ready to accept connections" in line and "read-only" not in line:
            stamps["ready"] = at
    if len(stamps) < 3:
        return {"start_s": 0.0, "replay_s": round(total_s, 3)}
    start = (stamps["redo"] - stamps["first"]).total_seconds()
    replay = (stamps["ready"] - stamps["redo"]).total_seconds()
    return {"start_s": round(max(start, 0.0), 3), "replay_s": round(max(replay, 0.0), 3)}


def _wait_promoted(cluster: Cluster, info: StanzaInfo, target: datetime, *,
                   deadline: float) -> None:
    """pg_ctl returns once recovery has begun; the copy is usable when it is promoted. A
    server that stops meanwhile ran out of WAL, or failed: the log says which."""
    while time.monotonic() < deadline:
        pid = cluster.pid
        alive = pid is not None and _alive(pid)
        if not alive:
            time.sleep(0.2)  # the log's last lines are written as the server exits
            raise explain(_read(cluster.logfile), info, target)
        try:
            with db.connect(cluster.url(), connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row and not row[0]:
                return
        except ConnectionFailed:
            pass  # still replaying: it accepts no connections with hot_standby off
        time.sleep(0.2)
    raise RecoveryFailed(f"recovery to {target.isoformat()} did not finish in time",
                         log_tail="\n".join(_read(cluster.logfile).splitlines()[-20:]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError, too, means it exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def explain(server_log: str, info: StanzaInfo, target: datetime) -> RecoveryFailed:
    """Why a recovery stopped: a segment missing from the middle of the archive, a target
    after the last archived WAL, or the server's own FATAL line."""
    tail = "\n".join(server_log.strip().splitlines()[-20:])
    if "recovery ended before configured recovery target was reached" in server_log:
        restored = RESTORED_RE.findall(server_log)
        last = LAST_XACT_RE.search(server_log)
        reached = f"; the last transaction replayed was at {last.group(1)}" if last else ""
        if restored:
            missing = pgbackrest.next_segment(restored[-1])
            if info.wal_max and missing[8:] < info.wal_max[8:]:
                return RecoveryFailed(
                    f"WAL segment {missing} is missing from the archive: recovery stopped "
                    f"after {restored[-1]}, short of the target {target.isoformat()}, while "
                    f"the archive goes on to {info.wal_max}{reached}",
                    segment=missing, log_tail=tail)
        return RecoveryFailed(
            f"the target {target.isoformat()} is after the last archived WAL "
            f"({restored[-1] if restored else info.wal_max}){reached}: recovery stops at the "
            "first transaction after the target, and the archive has none", segment=None,
            log_tail=tail)
    fatal = [ln for ln in server_log.splitlines() if "FATAL" in ln or "PANIC" in ln]
    return RecoveryFailed("the recovered copy did not start: "
                          + (fatal[-1].split("FATAL:", 1)[-1].strip() if fatal
                             else (tail.splitlines()[-1] if tail else "no server log")),
                          log_tail=tail)
