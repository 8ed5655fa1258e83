"""The built-in checks of a point-in-time drill (`--source pgbackrest`), in recovery order.

Two are its own: the copy reached the target time, and the data lost there, measured by the
heartbeat rows, is within the RPO. The rest are the dump drill's checks, run unchanged on
the recovered copy (the fixtures of `drills.pitr_fixtures` stand in for the dump's).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from backup_core import heartbeat, pgbackrest, wal_status
from backup_core.conninfo import ConnInfo
from backup_core.durations import human
from backup_core.errors import AtbError
from backup_core.pgbackrest import Stanza
from drills import checks as shared
from drills import observer
from drills.failures import CheckFailed
from drills.pitr_fixtures import RecoveryOutcome
from drills.plugin import Evidence
from drills.result import RpoFacts
from drills.state import DrillState

pytestmark = pytest.mark.drill


def test_recovery_reaches_the_target_time(drill: DrillState, drill_recovery: RecoveryOutcome,
                                          evidence: Evidence) -> None:
    """Point-in-time recovery is a base backup plus every WAL segment since: one missing
    segment, or a target past the archive, and the recovery stops short."""
    facts = drill.pitr
    assert facts is not None
    if facts.target:
        evidence.add(f"target {facts.target} ({facts.target_choice})")
    if facts.backup_label:
        evidence.add(f"pgBackRest {facts.backup_type} backup {facts.backup_label}, stopped "
                     f"{facts.backup_stopped}")
    if not drill_recovery.ok or drill_recovery.recovery is None:
        raise CheckFailed(drill_recovery.error or "the recovery did not run",
                          expected=f"recovered to {facts.target or 'the target'}",
                          found=f"WAL segment {drill_recovery.segment} missing"
                          if drill_recovery.segment else "stopped short",
                          output=drill_recovery.log_tail)
    r = drill_recovery.recovery
    evidence.add(f"recovered to {r.recovered_to.isoformat() if r.recovered_to else '-'}: "
                 f"{r.segments} WAL segments, {r.wal_bytes / 2**20:.1f} MiB of WAL replayed")
    evidence.add(f"restore files {human(r.restore_s)}, start {human(r.start_s)}, WAL replay "
                 f"{human(r.replay_s)}")


def test_data_loss_is_within_the_rpo_target(drill: DrillState, drill_recovery: RecoveryOutcome,
                                           drill_url: ConnInfo, evidence: Evidence) -> None:
    """The heartbeat rows are the clock: the newest one at or before the target shows how
    much was really lost by recovering to that moment, against the RPO promised."""
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
        raise CheckFailed("no heartbeat at or before the target in the recovered data",
                          expected=f"a TEST/Heartbeat row within {human(target_s)} of "
                                   f"{target.isoformat()}",
                          found="none: is `atb tests heartbeat` scheduled?")
    loss = (target - newest).total_seconds()
    drill.pitr = replace(drill.pitr, newest_heartbeat=newest.isoformat(),
                         data_loss_s=round(loss, 3))
    evidence.add(f"target {target.isoformat()}, newest heartbeat {newest.isoformat()}: "
                 f"measured data loss {human(loss)}, RPO target {human(target_s)}")
    archiving = _archiving(drill, target_s)
    if archiving:
        evidence.add(archiving[0])
    met = loss <= target_s and (not archiving or archiving[1])
    summary = (f"target {human(target_s)}; measured data loss {human(loss)} at "
               f"{target.isoformat()} (newest heartbeat {newest.isoformat()})"
               + (f"; {archiving[0]}" if archiving else "") + ": "
               + ("met" if met else "NOT MET"))
    drill.rpo = RpoFacts(target_s=target_s, largest_gap_s=loss, met=met, summary=summary)
    if loss > target_s:
        raise CheckFailed("the data lost at the target exceeds the RPO target",
                          expected=f"at most {human(target_s)} before {target.isoformat()}",
                          found=f"newest heartbeat {newest.isoformat()}, {human(loss)} "
                                "before the target")
    if archiving and not archiving[1]:
        drill.findings.append(f"RPO NOT MET NOW: the drill recovered within the RPO, but "
                              f"{archiving[0]}")
        pytest.xfail(f"archiving does not keep the RPO now (finding): {archiving[0]}")


def _archiving(drill: DrillState, rpo_s: float) -> tuple[str, bool] | None:
    """Archiving as it stands now (pg_stat_archiver on production, read only), when
    production is reachable."""
    production, o = drill.reachable_production, drill.options
    if production is None or o.stanza is None:
        return None
    try:
        a = wal_status.judge(pgbackrest.info(Stanza(o.stanza, o.pgbackrest_config)),
                             observer.read_archiver(production), now=datetime.now(UTC),
                             rpo_s=rpo_s)
    except AtbError as exc:
        return f"archiving not judged: {exc}", True
    text = (f"archiving current: last WAL {a.last_archived_wal} archived "
            f"{human(a.lag_s)} ago" if a.ok else "archiving: " + "; ".join(a.missed))
    return text, a.ok


# The dump drill's checks that apply to a recovered copy, in the order a recovery goes.
test_alembic_upgrade_head_reaches_the_script_head = \
    shared.test_alembic_upgrade_head_reaches_the_script_head
test_sequences_are_ahead_of_their_columns = shared.test_sequences_are_ahead_of_their_columns
test_indexes_are_valid = shared.test_indexes_are_valid
test_foreign_keys_hold_for_every_row = shared.test_foreign_keys_hold_for_every_row
test_amcheck_finds_no_corruption = shared.test_amcheck_finds_no_corruption
test_measured_rto_is_within_target = shared.test_measured_rto_is_within_target
test_application_integration_suite_passes = shared.test_application_integration_suite_passes
test_production_was_not_touched = shared.test_production_was_not_touched
