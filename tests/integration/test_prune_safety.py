"""Prune deletes only what it positively knows; verify and drills never condemn a good backup.

One test per way backups were lost (issue 16), each on a tree of real backups of real
PostgreSQL 15 clusters, through the real command line, asserting exact counts and exit codes
and that the backups that must survive still pass `atb db verify`. Trees of many backups are
made from one real dump copied under other names with its manifest rewritten to match (real
files that verify, for a fraction of the cost of a dump each).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.store import catalog, retention
from backup_core.store.naming import backup_path, drill_path, manifest_path, roles_path, verify_path
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, random_password
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import SafetyRefusal
from drills.demo import example_dir
from tests.conftest import make_database
from tests.helpers import atb, atb_inproc, copy_backup, drill, oldest, read_only_tmpfs

NOW = datetime.now(UTC).replace(microsecond=0)


def days_ago(n: float) -> datetime:
    return (NOW - timedelta(days=n)).replace(microsecond=0)


@pytest.fixture(scope="module")
def app(pg15: Cluster) -> ConnInfo:
    return make_database(pg15, rows=50)


@pytest.fixture(scope="module")
def seed(app: ConnInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real backup, the original of every copy."""
    return create_backup(app, tmp_path_factory.mktemp("seed")).path


def clone(src: Path, root: Path, at: datetime, *, database: str | None = None) -> Path:
    """A copy of the real backup `src` filed under `at` (and `database`) in the tree `root`,
    its manifest rewritten to describe it: a sound backup that verifies."""
    data = json.loads(manifest_path(src).read_text())
    dest = backup_path(root, database or data["database"], at)
    assert not dest.exists(), f"{dest} already made"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    shutil.copyfile(roles_path(src), roles_path(dest))
    data.update(file=dest.name, taken_at=at.isoformat(), started_at=at.isoformat(),
                finished_at=at.isoformat(), database=database or data["database"],
                roles={**data["roles"], "file": roles_path(dest).name})
    manifest_path(dest).write_text(json.dumps(data))
    return dest


def dumps(root: Path) -> set[Path]:
    return {p for p in root.rglob("backup-*.dump")}


def verified_ok(root: Path) -> int:
    """How many backups `atb db verify --all` passes (it must exit 0: all of them)."""
    done = atb_inproc("db", "verify", "--all", env={"BACKUP_DIR": str(root)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.count("OK ")


# 1. BACKUP_DIR one level too high ------------------------------------------------------------

def test_a_backup_dir_one_level_too_high_deletes_nothing_and_names_the_real_root(
    seed: Path, tmp_path: Path
) -> None:
    srv = tmp_path / "srv" / "x"
    real = srv / "backups"
    by_age = {d: clone(seed, real, days_ago(d), database="d") for d in range(30)}
    made = set(by_age.values())
    done = atb_inproc("db", "prune", env={"BACKUP_DIR": str(srv)})
    assert done.returncode == 8, done.stderr
    assert done.stderr.startswith(f"atb: error: {real} looks like the real backup tree")
    assert done.stderr.count("\n") == 1 and dumps(real) == made
    listing = json.loads(atb_inproc("db", "list", "--json", env={"BACKUP_DIR": str(srv)}).stdout)
    assert {r["state"] for r in listing} == {"misfiled"}
    assert verified_ok(real) == 30
    done = atb_inproc("db", "prune", "--json", env={"BACKUP_DIR": str(real)})
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["delete"]) == 23  # the right root: the policy, no more
    assert dumps(real) == {by_age[d] for d in range(7)}
    assert verified_ok(real) == 7


# 2. a broken tool condemns nothing -----------------------------------------------------------

def _tiers(times: list[datetime]) -> set[datetime]:
    """What --retention-days 7 --keep-last 3 --keep-weekly 8 --keep-monthly 3 keeps of
    weekly backups (each in its own ISO week), computed independently of retention.py."""
    newest = sorted(times, reverse=True)
    months: list[tuple[int, int]] = []
    monthly = set()
    for t in newest:
        if (t.year, t.month) not in months and len(months) < 3:
            months.append((t.year, t.month))
            monthly.add(t)
    return set(newest[:8]) | monthly


def test_a_broken_pg_restore_condemns_no_backup_and_prune_keeps_every_tier(
    seed: Path, tmp_path: Path, chain15: toolchain.Toolchain
) -> None:
    root = tmp_path / "b"
    times = [days_ago(7 * w + 0.5) for w in range(20)]
    made = {clone(seed, root, t): t for t in times}
    # sidecars an older atb wrote when a tool failed: they prove nothing about the file
    for p in list(made)[:5]:
        verify_path(p).write_text(json.dumps({"ok": False, "at": "2026-01-01T00:00:00+00:00",
                                              "deep": False, "reason": "toc: pg_restore: error"}))
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    script = broken / "pg_restore"
    script.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_restore "
                      f"(PostgreSQL) {chain15.version}'; exit 0; fi\nexit 1\n")
    script.chmod(0o755)
    done = atb_inproc("db", "verify", "--all",
                      env={"BACKUP_DIR": str(root), "PG_BINDIR": str(broken)})
    assert done.returncode == 5, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "the tool failed, not the backup" in done.stderr
    assert len(list(root.rglob("*.verify.json"))) == 5  # nothing new written beside a backup
    assert all(b.complete for b in catalog.scan(root))
    done = atb_inproc("db", "prune", "--keep-weekly", "8", "--keep-monthly", "3", "--json",
                      env={"BACKUP_DIR": str(root)})
    assert done.returncode == 0, done.stderr
    kept = {made[p] for p in dumps(root)}
    assert kept == _tiers(times) and len(kept) >= 8  # 8 weeks and up to 3 months
    assert verified_ok(root) == len(kept)


# 3. a drill the backup did not cause keeps the PASS -------------------------------------------

def test_a_drill_failure_the_backup_did_not_cause_never_replaces_its_pass(
    history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    root = tmp_path / "b"
    x = copy_backup(oldest(history[1]), root)  # days old: only a PASS protects it
    for hours in (2, 4, 6, 8, 10):
        clone(x, root, (NOW - timedelta(hours=hours)).replace(minute=0, second=0))
    args = ("--backup", str(x), "--schedule", "30d", "--rpo-target", "30d", "--alembic-config",
            str(example_dir() / "alembic.ini"), "--integration-cmd", "true")
    reports = tmp_path / "r"
    done, result = drill(*args, backup_dir=root, report_dir=reports)
    assert done.returncode == 0 and result["verdict"] == "PASS", (result.get("not_run"),
                                                                  done.stderr)
    # the sandbox server does not answer: the drill fails, the backup did not cause it
    done, result = drill(*args, "--sandbox", "server", "--sandbox-url",
                         "postgresql://atb@127.0.0.1:1/postgres", backup_dir=root,
                         report_dir=reports)
    assert done.returncode == 1 and result["verdict"] == "FAIL", done.stderr
    [row] = [r for r in json.loads(atb_inproc("db", "list", "--json", env={"BACKUP_DIR": str(root)})
                                   .stdout) if r["path"] == str(x)]
    assert row["checked"] == "drill-passed" and row["drill"]["verdict"] == "PASS"
    assert row["drills"] == 2
    history_ = json.loads(drill_path(x).read_text())["history"]
    verdicts = [(h["verdict"], h["caused"]) for h in history_]
    assert verdicts == [("PASS", False), ("FAIL", False)]
    done = atb_inproc("db", "prune", "--retention-days", "1", "--keep-last", "3", "--json",
                      env={"BACKUP_DIR": str(root)})
    assert done.returncode == 0, done.stderr
    [kept] = [k for k in json.loads(done.stdout)["keep"] if k["path"] == str(x)]
    assert kept["reasons"] == ["newest drill-verified"]
    assert json.loads(done.stdout)["delete"] == []  # without its PASS, X alone would go
    assert x.exists() and verified_ok(root) == 6


# 4. two servers, one database name ------------------------------------------------------------

@pytest.fixture(scope="module")
def server_b(chain15: toolchain.Toolchain) -> Iterator[Cluster]:
    with Cluster(chain15, password=random_password(), tcp=True) as cluster:
        yield cluster


def _appdb(cluster: Cluster) -> ConnInfo:
    with db.connect(cluster.url(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'appdb'").fetchone():
            conn.execute("CREATE DATABASE appdb")
    info = cluster.url("appdb")
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int)")
    return info


def test_two_servers_backing_up_one_database_name_never_cover_each_other(
    pg15: Cluster, server_b: Cluster, tmp_path: Path
) -> None:
    root = tmp_path / "b"
    first_a = create_backup(_appdb(pg15), root, at=days_ago(10)).path  # server A stopped
    a = {first_a} | {clone(first_a, root, days_ago(10 + d)) for d in range(1, 13)}
    first_b = create_backup(_appdb(server_b), root).path
    b = {first_b} | {clone(first_b, root, days_ago(d + 0.25)) for d in range(1, 12)}
    record_a = catalog.find(root, first_a)
    assert record_a is not None
    sources = {catalog.scan(root, "appdb")[0].source, record_a.source}
    assert len(sources) == 2 and all(s.startswith("system ") for s in sources)
    done = atb_inproc("db", "status", "--json", "--schedule", "1d", "--rpo", "2d",
                      env={"BACKUP_DIR": str(root)})
    assert done.returncode == 1, done.stderr
    [status] = json.loads(done.stdout)
    assert status["backups"] == 25 and sorted(status["sources"].values()) == [12, 13]
    [stopped] = [m for m in status["missed"] if "stopped" in m]
    assert stopped.startswith(f"13 backups of {record_a.source} stopped at "
                              f"{days_ago(10):%Y-%m-%dT%H:%M:%SZ}")
    listing = atb_inproc("db", "list", env={"BACKUP_DIR": str(root)}).stdout.splitlines()
    assert listing[0].split()[-3:] == ["state", "source", "path"]
    assert sum(record_a.source.split(",")[0] in line for line in listing) == 13
    done = atb_inproc("db", "prune", "--retention-days", "7", "--keep-last", "3",
                      env={"BACKUP_DIR": str(root)})
    assert done.returncode == 0, done.stderr
    # server A stopped: nothing newer of its own replaces its backups, so none expires
    assert dumps(root) & a == a
    assert "no sound backup of its source within 7 days" in done.stdout
    assert len(dumps(root) & b) == 7  # server B: its 7 days
    assert verified_ok(root) == 20


# 5. clocks -------------------------------------------------------------------------------------

def test_a_backup_is_named_by_the_servers_clock_and_a_wrong_local_clock_is_loud(
    app: ConnInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "b"
    behind = timedelta(days=365)
    with caplog.at_level(logging.WARNING, logger="atb.backup"):
        made = create_backup(app, root, clock=lambda: datetime.now(UTC) - behind)
    real_now = datetime.now(UTC)
    taken = datetime.fromisoformat(made.manifest.taken_at)
    assert timedelta(0) <= real_now - taken < timedelta(seconds=30)
    assert made.path.parent == root / app.dbname / f"{taken:%Y/%m/%d}"
    assert made.manifest.clock_skew_s is not None
    assert abs(made.manifest.clock_skew_s + behind.total_seconds()) < 30
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"says {taken - behind:%Y-%m-%d}" in warning
    assert f"the database server's says {taken:%Y-%m-%d}" in warning and "behind" in warning
    # a prune on that host's clock would judge today's backup a year old: it refuses
    past = real_now - behind
    plan = retention.plan_prune(catalog.scan(root, now=past), now=past,
                                policy=retention.Policy(retention_days=1, keep_last=1))
    assert plan.refusal.startswith(f"the clock is behind the newest backup: {made.path.name}")
    assert plan.delete == []
    with pytest.raises(SafetyRefusal):
        retention.apply_prune(plan, root)
    assert made.path.exists() and verified_ok(root) == 1
    # the command line, on this host's clock: a backup that finished (server time) a day
    # after this host's now says this clock is behind: nothing is deleted, exit 8
    for d in range(10, 15):
        clone(made.path, root, days_ago(d))
    ahead = clone(made.path, root, days_ago(0.5))
    data = json.loads(manifest_path(ahead).read_text())
    manifest_path(ahead).write_text(json.dumps(
        {**data, "finished_at": (real_now + timedelta(days=1)).isoformat()}))
    done = atb_inproc("db", "prune", "--retention-days", "1", "--keep-last", "1",
                      env={"BACKUP_DIR": str(root)})
    assert done.returncode == 8 and done.stderr.count("\n") == 1, done.stderr
    assert f"the clock is behind the newest backup: {ahead.name} finished at" in done.stderr
    assert len(dumps(root)) == 7 and verified_ok(root) == 7


# verify writes only inside the tree ------------------------------------------------------------

def test_verify_never_writes_beside_a_file_outside_the_backup_tree(
    seed: Path, tmp_path: Path
) -> None:
    before = sorted(os.listdir("/etc"))
    done = atb_inproc("db", "verify", "/etc/passwd", env={"BACKUP_DIR": str(tmp_path / "b")})
    assert done.returncode == 1 and "not a backup" in done.stdout, done.stdout + done.stderr
    assert sorted(os.listdir("/etc")) == before
    elsewhere = tmp_path / "elsewhere"
    outside = clone(seed, elsewhere, days_ago(1))
    done = atb_inproc("db", "verify", str(outside), env={"BACKUP_DIR": str(tmp_path / "b")})
    assert done.returncode == 0, done.stderr
    assert not list(elsewhere.rglob("*.verify.json"))
    inside = clone(seed, tmp_path / "b", days_ago(1))
    assert atb_inproc("db", "verify", str(inside), env={"BACKUP_DIR": str(tmp_path / "b")}
                      ).returncode == 0
    assert json.loads(verify_path(inside).read_text())["ok"] is True


# names in any bytes, read-only trees ---------------------------------------------------------

def test_names_that_are_not_utf8_are_shown_escaped_by_every_command(
    seed: Path, tmp_path: Path
) -> None:
    root = tmp_path / "b"
    good = clone(seed, root, days_ago(1))
    os.makedirs(os.fsencode(root) + b"/\xff\xfe/2026", exist_ok=True)
    with open(os.fsencode(good.parent) + b"/backup-\xff.dump", "wb") as fh:
        fh.write(b"x")
    with open(os.fsencode(root) + b"/\xff\xfe/2026/backup-20260101T000000Z.dump", "wb") as fh:
        fh.write(b"x")
    # list and a dry prune show them (0); status misses (1: the odd directory has no complete
    # backup) and verify fails them (1: no manifest), in text and in JSON alike
    for args, code in ((["db", "list"], 0), (["db", "prune", "--dry-run"], 0),
                       (["db", "status"], 1), (["db", "verify", "--all"], 1)):
        for extra in ([], ["--json"]):
            done = atb_inproc(*args, *extra, env={"BACKUP_DIR": str(root)})
            assert (done.returncode, done.stderr) == (code, ""), (args, done.stderr)
            shown = done.stdout + done.stderr
            if args[1] in ("list", "prune"):
                assert ("\\xff" in shown or "\\udcff" in shown), (args, shown)
    prom = tmp_path / "atb.prom"
    done = atb_inproc("db", "status", "--prometheus", str(prom), env={"BACKUP_DIR": str(root)})
    assert done.returncode == 1 and 'atb_backup_count{database="\\\\xff\\\\xfe"} 0' in \
        prom.read_text(), done.stderr
    assert atb_inproc("db", "verify", str(good), env={"BACKUP_DIR": str(root)}).returncode == 0


@pytest.fixture
def read_only_tree(seed: Path, tmp_path: Path) -> Iterator[Path]:
    """Ten backups, seven of them expired, on a tmpfs remounted read-only."""
    def fill(mount: Path) -> None:
        clone(seed, mount, days_ago(0.5))  # a recent one: the old ones have expired
        for d in range(9):
            clone(seed, mount, days_ago(10 + d))

    with read_only_tmpfs(tmp_path / "ro", fill) as mount:
        yield mount


def test_prune_of_a_read_only_tree_is_one_line_exit_7_and_deletes_nothing(
    read_only_tree: Path
) -> None:
    before = {p: p.stat().st_size for p in read_only_tree.rglob("*")}
    done = atb_inproc("db", "prune", "--keep-last", "3", env={"BACKUP_DIR": str(read_only_tree)})
    assert done.returncode == 7, done.stderr
    assert done.stderr.count("\n") == 1 and "nothing was deleted" in done.stderr
    assert {p: p.stat().st_size for p in read_only_tree.rglob("*")} == before


# kill -9 at every step -------------------------------------------------------------------------

BACKUP_STEPS = ["backup-dumped", "backup-manifest-written", "backup-roles-published",
                "backup-manifest-published", "backup-dump-published"]


def test_kill_9_at_every_step_of_a_backup_loses_nothing_and_nothing_half_looks_sound(
    app: ConnInfo, seed: Path, tmp_path: Path
) -> None:
    root = tmp_path / "b"
    old = {clone(seed, root, days_ago(d + 1)) for d in range(3)}
    for step in BACKUP_STEPS:
        done = atb("db", "backup", env={"BACKUP_DIR": str(root), "ATB_TEST_KILL_AT": step},
                   url=app)
        assert done.returncode == -signal.SIGKILL, (step, done.stderr)
        sound = {b.path for b in catalog.scan(root) if b.complete}
        assert old <= sound, step
        assert len(sound - old) == (1 if step == "backup-dump-published" else 0), step
        assert verified_ok(root) == len(sound), step  # every sound-looking backup is whole
        old = sound
    done = atb_inproc("db", "prune", "--json", env={"BACKUP_DIR": str(root)})
    assert done.returncode == 0, done.stderr
    assert not list(root.rglob(".*partial*"))  # the dead backups' partial files went
    assert {b.path for b in catalog.scan(root) if b.complete} == old
    assert [b.state for b in catalog.scan(root) if not b.complete] == []  # and their manifest


PRUNE_STEPS = ["prune-renamed", "prune-sidecar-deleted"]


@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_kill_9_at_every_step_of_a_prune_never_leaves_a_half_backup_that_looks_sound(
    step: str, seed: Path, tmp_path: Path
) -> None:
    root = tmp_path / "b"
    made = [clone(seed, root, days_ago(d)) for d in range(0, 20, 2)]
    keep = set(made[:4])  # within 7 days: 0, 2, 4, 6
    done = atb("db", "prune", env={"BACKUP_DIR": str(root), "ATB_TEST_KILL_AT": step})
    assert done.returncode == -signal.SIGKILL, done.stderr
    items = catalog.scan(root)
    assert keep <= {b.path for b in items if b.complete}
    assert [b.state for b in items if not b.complete] == ["pruning"]
    assert verified_ok(root) == sum(b.complete for b in items)
    done = atb_inproc("db", "prune", "--json", env={"BACKUP_DIR": str(root)})
    assert done.returncode == 0, done.stderr
    assert dumps(root) == keep and not list(root.rglob(".*"))
    assert {p.name for p in root.rglob("*") if p.is_file()} == {
        side(q).name for q in keep
        for side in (lambda p: p, manifest_path, roles_path, verify_path)}
    assert verified_ok(root) == 4


def test_a_backup_dir_one_level_too_deep_is_named_by_list_and_status(
    seed: Path, tmp_path: Path
) -> None:
    """BACKUP_DIR=<tree>/<db>: list showed a database named "2026" and status judged it
    (exit 1), without prune's hint. Both now name the real tree; status refuses (exit 2),
    list still lists, after the hint on stderr."""
    real = tmp_path / "backups"
    for d in range(3):
        clone(seed, real, days_ago(d), database="shop")
    deep = real / "shop"
    hint = (f"{real} looks like the real backup tree (BACKUP_DIR points inside it): point "
            "BACKUP_DIR there")
    listed = atb_inproc("db", "list", env={"BACKUP_DIR": str(deep)})
    assert listed.returncode == 0 and listed.stdout.count("misfiled") == 3
    [warned] = listed.stderr.splitlines()
    assert warned.endswith(f"WARNING {hint}"), warned
    status = atb_inproc("db", "status", env={"BACKUP_DIR": str(deep)})
    assert (status.returncode, status.stdout, status.stderr) == (2, "", f"atb: error: {hint}\n")
    pruned = atb_inproc("db", "prune", env={"BACKUP_DIR": str(deep)})
    assert (pruned.returncode, pruned.stderr) == (
        8, f"atb: error: {hint}; nothing was deleted\n")
    assert len(dumps(real)) == 3
    # the right tree, asked for a database it does not hold: said as such
    env = {"BACKUP_DIR": str(real)}
    none = atb_inproc("db", "list", "--database", "nosuch", env=env)
    assert (none.returncode, none.stdout) == (0, f"no backups of database nosuch under {real}\n")
    unverified = atb_inproc("db", "verify", "--latest", "--database", "nosuch", env=env)
    assert (unverified.returncode, unverified.stderr) == (
        2, f"atb: error: no backups of database nosuch under {real} to verify\n")
