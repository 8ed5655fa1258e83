"""Running the real `atb` command line: as a child process, as cron or CI would, where the
process boundary is under test; in this process otherwise (`atb_inproc`, same result shape)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_core.reading.target import TEST_KILL_AT
from backup_core.store import catalog
from backup_core.store.naming import manifest_path, roles_path
from backup_core.tools import conninfo, db
from backup_core.tools.conninfo import ConnInfo
from drills.options import DrillOptions


def _child_env(env: Mapping[str, str] | None, url: ConnInfo | None) -> dict[str, str]:
    """What `atb` sees: this process's environment without its own DATABASE_URL and BACKUP_DIR,
    plus the test's."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR")}
    if url is not None:
        full_env["DATABASE_URL"] = url.secret_url
    full_env.update(env or {})
    return full_env


def atb(*args: str, env: Mapping[str, str] | None = None, url: ConnInfo | None = None,
        timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`atb ARGS` as a child process: for tests of what only a process shows (its environment,
    its children's, signals, argv in ps, a terminal, resource limits)."""
    return subprocess.run([sys.executable, "-m", "drills.cli", *args],
                          env=_child_env(env, url), capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]


@contextmanager
def _as_a_fresh_process(environ: Mapping[str, str]) -> Iterator[None]:
    """The process-wide state `atb` reads or sets up, as a new process would have it (exactly
    `environ`, TMPDIR read afresh, no detached libpq variable, the logging
    and the SIGTERM handler it installs), put back as it was afterwards, whatever happened."""
    saved_env, saved_tempdir = dict(os.environ), tempfile.tempdir
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    saved_detached = dict(conninfo._detached)
    root, ours = logging.getLogger(), logging.getLogger("atb")
    saved_handlers, saved_levels = root.handlers[:], (root.level, ours.level)
    os.environ.clear()
    os.environ.update(environ)
    tempfile.tempdir = None  # cached at first use: a child would read TMPDIR
    conninfo._detached.clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = saved_tempdir
        conninfo._detached.clear()
        conninfo._detached.update(saved_detached)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_levels[0])
        ours.setLevel(saved_levels[1])
        signal.signal(signal.SIGTERM, saved_sigterm)


def child_options_file(options: DrillOptions, tmp_path: Path, sandbox_tmp: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Path:
    """The options file `atb drill run` writes for its child, for a test that calls
    `child.begin` in this process: what the sandbox leaves goes to `sandbox_tmp`, and the
    libpq variables `begin` detaches (as the drill's child does) are put back afterwards."""
    options_file = tmp_path / "options.json"
    options_file.write_text(options.to_json())
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox_tmp))
    for name, value in list(os.environ.items()):
        if name.startswith("PG"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(conninfo, "_detached", dict(conninfo._detached))
    return options_file


def atb_inproc(*args: str, env: Mapping[str, str] | None = None,
               url: ConnInfo | None = None) -> subprocess.CompletedProcess[str]:
    """`atb ARGS` called in this process (click's CliRunner, stdout and stderr apart): what
    `atb` prints and the code it exits with, as `atb` returns them, without starting Python.
    Calls the entry point itself (`drills.cli.main`: whatever it sets up, then the exit code
    it would leave with). ATB_TESTS_CLI=subprocess runs each call as a child, to compare."""
    from drills import cli

    if os.environ.get("ATB_TESTS_CLI") == "subprocess":  # to compare: every call a child
        return atb(*args, env=env, url=url)
    if TEST_KILL_AT in (env or {}):
        raise AssertionError(f"{TEST_KILL_AT} makes atb kill the process it runs in: use atb")
    with _as_a_fresh_process(_child_env(env, url)), \
            CliRunner().isolation() as (out, err, _):
        try:
            cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["atb", *args], code, stdout, stderr)


def fingerprint(info: ConnInfo) -> dict[str, str]:
    """Production as a test sees it: every table's rows (order-independent md5), the
    schema hash the guard uses, and the Alembic revision. Equal means unchanged."""
    from psycopg import sql

    from backup_core.reading import guard, inventory
    from backup_core.tools import db

    out: dict[str, str] = {}
    with db.connect(info) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            row = conn.execute(sql.SQL(
                "SELECT count(*)::text || ':' || md5(coalesce(string_agg(t::text, ',' "
                "ORDER BY t::text), '')) FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table))).fetchone()
            out[f"{schema}.{table}"] = str(row[0]) if row else ""
        schema_row = conn.execute(guard.SCHEMA_HASH_SQL).fetchone()
        out["(schema)"] = str(schema_row[0]) if schema_row else ""
        out["(alembic)"] = inventory.alembic_revision(conn) or ""
    return out


class ArgvSampler:
    """What `ps` shows while a block runs: every process's /proc/<pid>/cmdline, sampled
    every few milliseconds in a thread."""

    def __init__(self) -> None:
        import threading

        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from pathlib import Path

        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        self.seen.add((proc / "cmdline").read_bytes())
                    except OSError:
                        continue
            self._stop.wait(0.002)

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def leaked(self, *secrets: str) -> list[str]:
        return [c.decode(errors="replace").replace("\0", " ") for c in self.seen
                if any(s and s.encode() in c for s in secrets)]


def drill(*args: str, backup_dir: Path, report_dir: Path, env: dict[str, str] | None = None,
          url: ConnInfo | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = atb_inproc("drill", "run", "--json", "--sandbox", "local", "--backup-dir",
                      str(backup_dir), "--report-dir", str(report_dir), *args, env=env, url=url)
    assert "Traceback" not in done.stderr, done.stderr
    return done, json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def checks(result: dict) -> dict[str, str]:
    return {c["name"]: c["outcome"] for c in result["checks"]}


def copy_backup(src: Path, dest_root: Path) -> Path:
    """One backup (dump and manifest) in a tree of its own, to damage without harm."""
    rel = src.relative_to(src.parents[4])
    dest = dest_root / rel
    dest.parent.mkdir(parents=True)
    for side in (lambda p: p, manifest_path, roles_path):
        if side(src).exists():
            shutil.copy2(side(src), side(dest))
    return dest


def digests(backups: list[Path]) -> dict[Path, str]:
    """Each backup's dump, manifest and roles file by sha256: equal means kept unchanged."""
    import hashlib

    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for b in backups
            for f in (b, manifest_path(b), roles_path(b)) if f.exists()}


def oldest(backup_dir: Path) -> Path:
    return [b for b in catalog.scan(backup_dir) if b.complete][-1].path


def interrupt_drill(args: list[str], tmp: Path, while_running: Callable[[], None],
                    env: Mapping[str, str] | None = None,
                    again_after: float | None = None, times: int = 2,
                    in_run: int = 1) -> tuple[int, str, str]:
    """`atb drill run ARGS` with an integration command that waits (in its `in_run`th run:
    the ones before pass at once), interrupted by Ctrl-C (SIGINT to its process group, as a
    terminal sends it) once that command has started and `while_running` has looked at what
    the drill holds, and `times - 1` times more every `again_after` seconds (an impatient
    user). Returns (exit code, stdout, stderr)."""
    import os
    import signal
    import time

    marker, runs = tmp / "integration-started", tmp / "integration-runs"
    slow = f"{sys.executable} -c \"import pathlib, time; r = pathlib.Path('{runs}'); " \
           f"n = len(r.read_text()) + 1 if r.exists() else 1; r.write_text('x' * n); " \
           f"n < {in_run} or (pathlib.Path('{marker}').touch(), time.sleep(120))\""
    full_env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "drill", "run", *args,
                             "--integration-cmd", slow, "--report-dir", str(tmp / "r")],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate(timeout=5)
    while_running()
    os.killpg(proc.pid, signal.SIGINT)
    for _ in range(times - 1 if again_after is not None else 0):
        time.sleep(again_after or 0)
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@contextmanager
def read_only_tmpfs(mount: Path, fill: Callable[[Path], object]) -> Iterator[Path]:
    """A 64 MB tmpfs at `mount`, filled by `fill`, then remounted read-only (root writes
    everywhere else); unmounted afterwards. Skipped where it cannot be mounted (not root),
    a failure in CI (which runs as root)."""
    import pytest

    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs")
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        fill(mount)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def drill_held_at_its_integration(backup: Path, tmp_path: Path, sandbox_tmp: Path,
                                  **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`atb drill run` in a process group of its own, held in its integration command (60 s
    of sleep) once its local sandbox runs under `sandbox_tmp`: the process and the sandbox's
    work directory, for a test that kills the drill there."""
    marker = tmp_path / "integration-started"
    slow = f"{sys.executable} -c \"import pathlib, time; pathlib.Path('{marker}').touch(); " \
           "time.sleep(60)\""
    child_env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                 "TMPDIR": str(sandbox_tmp), **env}
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "drill", "run", "--backup",
                             str(backup), "--sandbox", "local", "--no-record",
                             "--integration-cmd", slow, "--report-dir", str(tmp_path / "r")],
                            env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the drill never reached its integration command"
    [workdir] = sandbox_tmp.glob("atb-pg-*")
    return proc, workdir


def wait_archived(url: ConnInfo) -> None:
    """Switch WAL and wait until the archiver has pushed the segment."""
    with db.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if done and done[0] and done[0] >= row[0]:
                return
            time.sleep(0.1)
    raise AssertionError(f"WAL {row[0]} was not archived within 60 s")
