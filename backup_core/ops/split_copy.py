"""One table's data loaded over several connections at once: the critical path of a restore.

pg_restore loads a table in one COPY, whatever `--jobs`, so the largest table's load bounds a
parallel restore. Here pg_restore writes that table's data as COPY text (`--file=-`) and the
stream is cut at line boundaries into chunks dealt in turn to N `COPY ... FROM STDIN`
sessions. In COPY text a row is one line (a newline inside a value is written `\\n`, a
backslash `\\\\`), and the data ends with a line holding only `\\.`, so a cut after any
newline falls between two rows. Each session first runs the `SET` lines pg_restore printed
before the data (encoding, `standard_conforming_strings`, `search_path`...), as pg_restore's
own session would. Rows land in another physical order; their content does not change.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg

from backup_core.reading.toc import TocEntry
from backup_core.tools import db, toolchain
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import CommandFailed
from backup_core.tools.runner import spawn

CHUNK = 1 << 20  # bytes read from pg_restore at a time, then cut back to the last newline
END = b"\\.\n"  # the line that ends COPY text
# a split pays for its extra sessions only on a table this large (rows, as the manifest
# counted them at backup time)
MIN_ROWS = 1_000_000
# ... and only when that table would load alone for long: its rows must exceed what the other
# tables give the other jobs by this factor. A split's sessions write WAL for every row
# (pg_restore's own COPY into a table it has just created writes none under
# wal_level=minimal), and the post-data section waits for the whole data section, where
# pg_restore alone builds a table's indexes as soon as its own data is in. Measured at 1 GB on
# 2 cores (bench/RESULTS.md): orders holding 55 % of the rows, the split took 13.6 s against
# pg_restore's 12.7 s; holding all of them, 14.6-16.9 s against 17.8-18.2 s.
SHARE_MARGIN = 1.5


def split_candidate(entries: list[TocEntry], row_counts: dict[str, int], *, jobs: int = 2,
                    min_rows: int | None = None) -> TocEntry | None:
    """The TABLE DATA entry of the table with the most rows (by the manifest's counts), when
    it has at least `min_rows` (`MIN_ROWS`) and more than `SHARE_MARGIN` times the rows the
    other tables give each of the other `jobs - 1` jobs; None when no table is worth
    splitting (pure)."""
    least = MIN_ROWS if min_rows is None else min_rows
    data = {f"{e.schema}.{e.tag}": e for e in entries if e.desc == "TABLE DATA"}
    counted = [(n, name) for name, n in row_counts.items() if name in data]
    if jobs < 2 or not counted:
        return None
    rows, name = max(counted)
    others = sum(n for n, _ in counted) - rows
    if rows < least or rows <= SHARE_MARGIN * others / (jobs - 1):
        return None
    return data[name]


def table_data_argv(chain: toolchain.Toolchain, archive: Path, use_list: Path) -> list[str]:
    """pg_restore writing the data of the one entry `use_list` names to stdout as SQL."""
    return [chain.tool("pg_restore"), "--data-only", "--file=-", f"--use-list={use_list}",
            str(archive)]


def preamble_statement(line: str) -> bool:
    """A session setting pg_restore prints before the data, to be run on each session."""
    return line.startswith(("SET ", "SELECT pg_catalog.set_config(")) and line.endswith(";")


def copy_statement(line: str) -> bool:
    return line.startswith("COPY ") and line.endswith(" FROM stdin;")


@dataclass(frozen=True)
class Cut:
    """A chunk of COPY text cut at a row boundary; `last` when it held the end line."""

    rows: bytes
    carry: bytes
    last: bool


def cut(pending: bytes) -> Cut:
    """Whole rows of `pending` (up to the last newline, or up to the end line) and the rest
    (pure). The end line is found only at a line start."""
    if pending.startswith(END):
        return Cut(b"", b"", True)
    end = pending.find(b"\n" + END)
    if end >= 0:
        return Cut(pending[:end + 1], b"", True)
    at = pending.rfind(b"\n") + 1
    return Cut(pending[:at], pending[at:], False)


@dataclass(frozen=True)
class Header:
    """As pg_restore printed them, in the archive's encoding (which a SET names)."""

    settings: tuple[bytes, ...]
    copy: bytes


def read_header(out: IO[bytes]) -> Header:
    """The settings and the COPY statement pg_restore prints before the rows."""
    settings: list[bytes] = []
    for raw in iter(out.readline, b""):
        line = raw.rstrip(b"\n")
        text = line.decode("latin-1")  # only ASCII prefixes and suffixes are looked at
        if copy_statement(text):
            return Header(tuple(settings), line.removesuffix(b";"))
        if preamble_statement(text):
            settings.append(line)
    raise _Ended("pg_restore wrote no COPY for the table's data")


class _Ended(CommandFailed):
    """pg_restore's output ended before the data did: its own error, if it wrote one, says
    why (`load_split`)."""


class _Aborted(Exception):
    """Raised in a session to roll its rows back when the load as a whole failed."""


class _Loader(threading.Thread):
    """One COPY session, writing the chunks it is handed until told to stop; it commits
    only when the load as a whole did not fail (`abort`)."""

    def __init__(self, target: ConnInfo, header: Header, index: int,
                 abort: threading.Event) -> None:
        super().__init__(name=f"atb-copy-{index}", daemon=True)
        self.target, self.header, self.abort = target, header, abort
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def run(self) -> None:
        told = False  # the end was handed over: nothing more will come
        try:
            with db.connect(self.target) as conn:
                for statement in self.header.settings:
                    conn.execute(statement)  # pg_restore's own SET, as it runs it
                with conn.cursor() as cur, cur.copy(self.header.copy) as copy:
                    while (chunk := self.chunks.get()) is not None:
                        copy.write(chunk)
                    told = True
                    if self.abort.is_set():
                        raise _Aborted  # the COPY fails: this session's rows roll back
                conn.commit()
        except BaseException as exc:  # kept for the caller; the rest is taken and dropped
            self.error = exc
            while not told:
                told = self.chunks.get() is None


def load_split(chain: toolchain.Toolchain, archive: Path, entry: TocEntry, target: ConnInfo,
               *, sessions: int, scratch_dir: Path, stop: threading.Event | None = None) -> None:
    """Load `entry`'s data into `target` over `sessions` COPY sessions. Raises
    `CommandFailed` when pg_restore or a session fails, naming pg_restore's own error when it
    wrote one; the sessions that have not committed by then roll back (an error the server
    reports only at a COPY's end can come after others committed: this is for a scratch
    database, dropped with its sandbox). `stop`, set by the caller (the rest of the restore
    failed), ends the load at the next chunk, rolled back."""
    errors = scratch_dir / f"split-{entry.dump_id}.err"
    try:
        _load(chain, archive, entry, target, sessions, scratch_dir, errors,
              stop or threading.Event())
    except _Ended as exc:
        stderr = errors.read_text("utf-8", "replace").strip()
        if not stderr:
            raise
        raise CommandFailed(f"pg_restore could not read the data of {entry.schema}."
                            f"{entry.tag}: {stderr.splitlines()[-1]}", detail=stderr) from exc


def _load(chain: toolchain.Toolchain, archive: Path, entry: TocEntry, target: ConnInfo,
          sessions: int, scratch_dir: Path, errors: Path, stop: threading.Event) -> None:
    use = scratch_dir / f"split-{entry.dump_id}.list"
    use.write_text(f"{entry.dump_id};\n")
    with errors.open("wb") as err, _streaming(table_data_argv(chain, archive, use), err) as proc:
        assert proc.stdout is not None
        header = read_header(proc.stdout)
        abort = threading.Event()
        loaders = [_Loader(target, header, i, abort) for i in range(max(1, sessions))]
        for loader in loaders:
            loader.start()
        try:
            pending, turn, done = b"", 0, False
            while not done:
                if stop.is_set():
                    raise CommandFailed("the split load was stopped: the rest of the "
                                        "restore failed")
                data = proc.stdout.read(CHUNK)
                if not data:
                    raise _Ended(f"pg_restore's data of {entry.schema}.{entry.tag} "
                                 "ended before its end line")
                piece = cut(pending + data)
                pending, done = piece.carry, piece.last
                if piece.rows:
                    loaders[turn % len(loaders)].chunks.put(piece.rows)
                    turn += 1
                if any(loader.error for loader in loaders):
                    proc.kill()  # the load failed: the rest of the stream is not wanted
                    break
            else:
                proc.stdout.read()  # the script's tail
        except BaseException:
            abort.set()
            raise
        finally:
            if any(loader.error for loader in loaders):
                abort.set()
            for loader in loaders:
                loader.chunks.put(None)
            for loader in loaders:
                loader.join()
        code = proc.wait()
    stderr = errors.read_text("utf-8", "replace")
    failed = next((loader.error for loader in loaders
                   if loader.error and not isinstance(loader.error, _Aborted)), None)
    if failed is not None:
        message = failed.diag.message_primary if isinstance(failed, psycopg.Error) else None
        raise CommandFailed(f"loading the data of {entry.schema}.{entry.tag}: "
                            f"{message or failed}") from failed
    if code != 0:
        raise CommandFailed(f"pg_restore could not read the data of {entry.schema}."
                            f"{entry.tag}: {(stderr.strip().splitlines() or [f'exit {code}'])[-1]}",
                            detail=stderr)


@contextlib.contextmanager
def _streaming(argv: list[str], err: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """pg_restore's stdout to read; its stderr to a file (a pipe nobody reads while the rows
    stream could fill and stall it)."""
    proc = spawn(argv, what="pg_restore (one table's data)", stdout=subprocess.PIPE,
                 stderr=err)
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
