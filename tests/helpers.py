"""Running the real `atb` command line as a child process, as cron or CI would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from backup_core import catalog
from backup_core.conninfo import ConnInfo
from backup_core.naming import manifest_path, roles_path


def atb(*args: str, env: Mapping[str, str] | None = None, url: ConnInfo | None = None,
        timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR")}
    if url is not None:
        full_env["DATABASE_URL"] = url.secret_url
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "drills.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)  # type: ignore[call-overload]


def fingerprint(info: ConnInfo) -> dict[str, str]:
    """Production as a test sees it: every table's rows (order-independent md5), the
    schema hash the guard uses, and the Alembic revision. Equal means unchanged."""
    from psycopg import sql

    from backup_core import db, guard, inventory

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
    done = atb("drill", "run", "--json", "--sandbox", "local", "--backup-dir", str(backup_dir),
               "--report-dir", str(report_dir), *args, env=env, url=url)
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


def oldest(backup_dir: Path) -> Path:
    return [b for b in catalog.scan(backup_dir) if b.complete][-1].path


def interrupt_drill(args: list[str], tmp: Path, while_running: Callable[[], None],
                    env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """`atb drill run ARGS` with an integration command that waits, interrupted by Ctrl-C
    (SIGINT to its process group, as a terminal sends it) once that command has started and
    `while_running` has looked at what the drill holds. Returns (exit code, stdout, stderr)."""
    import os
    import signal
    import time

    marker = tmp / "integration-started"
    slow = f"{sys.executable} -c \"import pathlib, time; pathlib.Path('{marker}').touch(); " \
           "time.sleep(120)\""
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
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err
