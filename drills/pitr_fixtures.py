"""The fixtures of a point-in-time drill (`--source pgbackrest`).

The drill plugin registers this module after itself, so its fixtures take the place of the
dump drill's fixtures of the same names (`drill_sandbox`, `drill_url`, `drill_conditions`,
`drill_backup`): the shared checks, and the user's own, run on the recovered copy unchanged.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest

from backup_core.ops import heartbeat
from backup_core.pitr import pgbackrest, pitr, wal_status
from backup_core.store.catalog import Backup
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.durations import human
from backup_core.tools.errors import AtbError
from drills import observer
from drills.result import PitrFacts, RpoFacts, SandboxFacts
from drills.sandbox import SandboxInfo
from drills.state import DrillState


@dataclass(frozen=True)
class Plan:
    """What the drill will recover, or why it cannot."""

    stanza: pgbackrest.Stanza
    info: pgbackrest.StanzaInfo | None = None
    target: datetime | None = None
    backup: pgbackrest.BackupSet | None = None
    chain: toolchain.Toolchain | None = None
    error: str = ""


@dataclass
class RecoveryOutcome:
    cluster: Cluster | None = None
    recovery: pitr.Recovery | None = None
    error: str = ""
    segment: str | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.cluster is not None


@dataclass(frozen=True)
class DataLoss:
    """The data lost by recovering to the target: the newest heartbeat at or before it (None
    when there is none), and archiving as it stands now (its line, whether it keeps the
    RPO) when production can be asked."""

    target: datetime
    target_s: float
    newest: datetime | None = None
    loss_s: float | None = None
    archiving: tuple[str, bool] | None = None


@pytest.fixture(scope="session")
def drill_data_loss(drill: DrillState, drill_recovery: RecoveryOutcome,
                    drill_url: ConnInfo) -> DataLoss:
    """The data loss at the target, measured by the heartbeat rows; recorded as the
    drill's RPO."""
    target_s = drill.options.rpo_target_s
    assert drill_recovery.recovery is not None and drill.pitr is not None
    target = drill_recovery.recovery.target
    try:
        newest = heartbeat.newest_heartbeat(drill_url, table=drill.options.heartbeat_table,
                                            before=target)
    except heartbeat.HeartbeatTableMissing:
        pytest.skip(f"table {drill.options.heartbeat_table} is not in the recovered database: "
                    "data loss cannot be measured")
    if newest is None:
        return DataLoss(target=target, target_s=target_s)
    loss = (target - newest).total_seconds()
    drill.pitr = replace(drill.pitr, newest_heartbeat=newest.isoformat(),
                         data_loss_s=round(loss, 3))
    archiving = _archiving(drill, target_s)
    met = loss <= target_s and (not archiving or archiving[1])
    summary = (f"target {human(target_s)}; measured data loss {human(loss)} at "
               f"{target.isoformat()} (newest heartbeat {newest.isoformat()})"
               + (f"; {archiving[0]}" if archiving else "") + ": "
               + ("met" if met else "NOT MET"))
    drill.rpo = RpoFacts(target_s=target_s, largest_gap_s=loss, met=met, summary=summary)
    return DataLoss(target=target, target_s=target_s, newest=newest, loss_s=loss,
                    archiving=archiving)


def _archiving(drill: DrillState, rpo_s: float) -> tuple[str, bool] | None:
    """Archiving as it stands now (pg_stat_archiver on production, read only), when
    production is reachable."""
    production, o = drill.reachable_production, drill.options
    if production is None or o.stanza is None:
        return None
    try:
        a = wal_status.judge(pgbackrest.info(pgbackrest.Stanza(o.stanza, o.pgbackrest_config)),
                             observer.read_archiver(production), now=datetime.now(UTC),
                             rpo_s=rpo_s)
    except AtbError as exc:
        return f"archiving not judged: {exc}", True
    text = (f"archiving current: last WAL {a.last_archived_wal} archived "
            f"{human(a.lag_s)} ago" if a.ok else "archiving: " + "; ".join(a.missed))
    return text, a.ok


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@pytest.fixture(scope="session")
def drill_pitr_plan(drill: DrillState, drill_chains: list[toolchain.Toolchain]) -> Plan:
    """Read the stanza, find the recoverable window and pick the target in it (or take
    --target-time), and the newest backup that finished before the target."""
    o = drill.options
    assert o.stanza is not None
    stanza = pgbackrest.Stanza(o.stanza, o.pgbackrest_config)
    drill.pitr = PitrFacts(stanza=o.stanza)
    try:
        with drill.phase("plan"):
            info = pgbackrest.info(stanza)
            chain = toolchain.for_server(info.pg_major, drill_chains)
            if o.target_time is not None:
                target, choice = o.target_time, "given with --target-time"
                drill.pitr = replace(drill.pitr, target_choice=choice)
            else:
                w = pitr.window(stanza, info, chain, now=drill.started_at, days=o.window_days)
                target = pitr.pick_target(w, o.seed)
                drill.pitr = replace(
                    drill.pitr, window_start=_iso(w.start), window_end=_iso(w.end),
                    target_choice=f"random in the recoverable window of the last "
                                  f"{o.window_days:g} days ({w.backups} backups; seed "
                                  f"{o.seed})")
            backup = pitr.backup_for(info, target)
    except AtbError as exc:
        drill.pitr = replace(drill.pitr, failure=str(exc))
        return Plan(stanza=stanza, error=str(exc))
    drill.pitr = replace(drill.pitr, target=_iso(target), backup_label=backup.label,
                         backup_type=backup.type, backup_stopped=_iso(backup.stopped))
    return Plan(stanza=stanza, info=info, target=target, backup=backup, chain=chain)


@pytest.fixture(scope="session")
def drill_recovery(drill: DrillState, drill_pitr_plan: Plan) -> Iterator[RecoveryOutcome]:
    """The stanza's cluster restored by pgBackRest into a directory of ours and recovered to
    the target; stopped and deleted at the end of the drill."""
    plan = drill_pitr_plan
    if plan.error or plan.info is None or plan.backup is None or plan.target is None \
            or plan.chain is None:
        yield RecoveryOutcome(error=plan.error)
        return
    manager = pitr.recovered(plan.stanza, plan.info, plan.backup, plan.target, plan.chain)
    with contextlib.ExitStack() as stack:
        try:  # its own phases are timed inside; only the teardown is timed here
            cluster, recovery = stack.enter_context(
                drill.timed(manager, enter=None, leave="sandbox teardown"))
        except AtbError as exc:
            segment = exc.segment if isinstance(exc, pitr.RecoveryFailed) else None
            drill.pitr = replace(drill.pitr or PitrFacts(), failure=str(exc))
            yield RecoveryOutcome(error=str(exc), segment=segment, log_tail=exc.detail)
            return
        stack.callback(os.environ.pop, "DATABASE_URL", None)  # first out: before teardown
        drill.phases.update({"restore files": recovery.restore_s, "start": recovery.start_s,
                             "WAL replay": recovery.replay_s})
        drill.pitr = replace(drill.pitr or PitrFacts(), recovered_to=_iso(recovery.recovered_to),
                             wal_bytes=recovery.wal_bytes, wal_segments=recovery.segments,
                             wal_spool_bytes=recovery.spool_bytes)
        drill.checks_started = time.monotonic()
        yield RecoveryOutcome(cluster=cluster, recovery=recovery)


def _app_database(cluster: Cluster, wanted: str | None) -> str:
    with db.connect(cluster.url()) as conn:
        every = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1").fetchall()]
    if wanted:
        if wanted not in every:
            raise AtbError(f"the recovered cluster has no database {wanted!r} "
                           f"(it has {', '.join(every)})")
        return wanted
    names = [n for n in every if n not in ("postgres", "template1")]
    if len(names) != 1:
        raise AtbError("name the application's database with --database: the recovered "
                       f"cluster has {', '.join(names) or 'none but postgres'}")
    return str(names[0])


@pytest.fixture(scope="session")
def drill_sandbox(drill: DrillState, drill_recovery: RecoveryOutcome) -> SandboxInfo:
    """The recovered copy's application database, as the dump drill's sandbox is."""
    if not drill_recovery.ok or drill_recovery.cluster is None:
        pytest.skip(f"not run: the recovery failed ({drill_recovery.error})")
    cluster = drill_recovery.cluster
    try:
        url = cluster.url(_app_database(cluster, drill.options.database))
    except AtbError as exc:
        pytest.fail(str(exc))
    ident = db.identity_of(url)
    assert ident is not None
    with db.connect(url) as conn:
        version = db.server_version(conn)
    info = SandboxInfo(provider="local (pgBackRest restore)", server_version=version, url=url,
                       identity=ident, start_s=0.0, chain=cluster.toolchain)
    os.environ["DATABASE_URL"] = url.app_url(
        drill.production.dialect if drill.production else "")
    drill.sandbox = SandboxFacts(provider=info.provider, server_version=version,
                                 database=info.dbname, identity=str(ident),
                                 url=url.redacted)
    return info


@pytest.fixture(scope="session")
def drill_url(drill_sandbox: SandboxInfo) -> ConnInfo:
    """The recovered database (before migration)."""
    return drill_sandbox.url


@pytest.fixture(scope="session")
def drill_conditions() -> dict[str, list[str]]:
    """Nothing was recorded beside a physical backup: whatever the copy has, fails."""
    return {}


@pytest.fixture(scope="session")
def drill_backup() -> Backup:
    pytest.skip("a point-in-time drill has no pg_dump backup")
