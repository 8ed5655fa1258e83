"""RTO from each path at the same database size: a pgBackRest restore plus the replay of N
minutes of WAL written flat out, beside a pg_dump archive restored the way the drill does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.ops.backup import create_backup
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.pitr import pgbackrest, pitr
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, service_user
from backup_core.tools.conninfo import ConnInfo
from bench.harness import Comparison, alternate
from drills import sandbox

STANZA = "bench"


def _pgbackrest(config: Path, *args: str) -> None:
    subprocess.run(["pgbackrest", f"--config={config}", f"--stanza={STANZA}",
                    "--log-level-file=off", *args], check=True, capture_output=True,
                   user=service_user(), timeout=3600)


def _write_for(url: ConnInfo, seconds: float) -> int:
    """Event rows inserted flat out for `seconds`, 500 to a transaction."""
    deadline, n = time.monotonic() + seconds, 0
    with db.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            conn.execute("INSERT INTO system_events (type, message, created_at) SELECT "
                         "'TEST', md5(g::text), now() FROM generate_series(1, 500) g")
            n += 500
    return n


def bench_pitr(chains: list[toolchain.Toolchain], size: str, minutes: float, repeat: int,
               build: Callable[[Cluster, str], tuple[ConnInfo, int]]) -> str:
    print(f"== point-in-time vs logical at {size}, {minutes:g} min of WAL", file=sys.stderr)
    chain = toolchain.for_server(15, chains)
    if shutil.which("pgbackrest") is None:
        return "\n## Point-in-time recovery vs logical restore\n\nnot run: no pgbackrest\n"
    work = Path(tempfile.mkdtemp(prefix="atb-bench-pitr-"))
    work.chmod(0o755)
    user = service_user()
    for sub in ("repo", "lock"):
        (work / sub).mkdir()
        if user:
            shutil.chown(work / sub, user, user)
    config = work / "pgbackrest.conf"
    settings = {"wal_level": "replica", "archive_mode": "on", "max_wal_size": "4GB",
                "archive_command": f"pgbackrest --config={config} --stanza={STANZA} "
                                   "archive-push %p"}
    comps: list[Comparison] = []
    try:
        with Cluster(chain, settings=settings) as prod:
            config.write_text(f"[global]\nrepo1-path={work / 'repo'}\nlock-path={work / 'lock'}"
                              f"\nlog-level-console=warn\nstart-fast=y\ncompress-type=lz4\n"
                              f"process-max=2\n\n[{STANZA}]\npg1-path={prod.datadir}\n"
                              f"pg1-socket-path={prod.socket_dir}\npg1-port={prod.port}\n"
                              f"pg1-user={prod.superuser}\n")
            config.chmod(0o644)
            _pgbackrest(config, "stanza-create")
            info_url, db_bytes = build(prod, size)
            _pgbackrest(config, "backup", "--type=full")
            with db.connect(prod.url(), autocommit=True) as conn:
                before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            rows = _write_for(info_url, minutes * 60)
            with db.connect(prod.url(), autocommit=True) as conn:
                after = conn.execute("SELECT pg_current_wal_lsn(), "
                                     "pg_walfile_name(pg_switch_wal())").fetchone()
                assert before is not None and after is not None
                while True:
                    done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver"
                                        ).fetchone()
                    if done and done[0] and done[0] >= after[1]:
                        break
                    time.sleep(0.5)
            wal_bytes = pitr.lsn(str(after[0])) - pitr.lsn(str(before[0]))
            dump = create_backup(info_url, work / "dumps", chains=chains).path
            stanza = pgbackrest.Stanza(STANZA, config)
            info = pgbackrest.info(stanza)
            newest = pitr.newest_commit(stanza, info, chain)
            target = newest - timedelta(milliseconds=1)  # recovery stops at a later commit
            backup = pitr.backup_for(info, target)
            phases: dict[str, float] = {}

            def physical() -> None:
                with pitr.recovered(stanza, info, backup, target, chain) as (_, rec):
                    phases.update(restore=rec.restore_s, start=rec.start_s,
                                  replay=rec.replay_s)

            def logical() -> None:
                with sandbox.open_sandbox("local", source_major=15, chains=chains) as sb:
                    restore_backup(RestoreRequest(dump, sb.url, no_owner=True), chains=chains)

            comp = alternate(Comparison("RTO: pgBackRest restore + WAL replay vs pg_restore",
                                        f"PITR ({minutes:g} min of WAL)",
                                        "logical (sandbox + pg_restore -j cores)", "-"),
                             physical, logical, repeat)
            comp.notes.append(
                f"{db_bytes / 2**20:.0f} MiB database; {wal_bytes / 2**20:.0f} MiB of WAL from "
                f"{rows} inserted rows; last PITR: restore files {phases['restore']:.2f}, "
                f"start {phases['start']:.2f}, replay {phases['replay']:.2f}")
            comps.append(comp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows_md = ["| comparison | A | B | A/B | goal | notes |", "|---|---|---|---|---|---|"]
    rows_md += ["| " + " | ".join(c.row()) + " |" for c in comps]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%MZ")
    return (f"\n## Point-in-time recovery vs logical restore ({size}, {stamp})\n\n"
            + "\n".join(rows_md) + "\n")
