"""The frozen result of a drill: typed records that the reports render and the JSON report
carries (`atb.drill-report` v1; its shape is unchanged by the typing). `DrillResult.from_dict`
reads a JSON report back, as the CLI does with its pytest child's result."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from backup_core.store.verdicts import DrillVerdict, caused_by_backup

SCHEMA_ID = "atb.drill-report"
SCHEMA_VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True)
class CheckRecord:
    name: str = ""
    title: str = ""
    why: str = ""
    outcome: str = "error"  # passed, failed, error, skipped, finding
    duration_s: float = 0.0
    evidence: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class BackupFacts:
    path: str | None = None
    taken_at: str | None = None
    age_s: float | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    pg_dump_version: str | None = None
    source_server_version: str | None = None
    alembic_revision: str | None = None
    tables: int | None = None
    rows: int | None = None
    row_counts_mode: str | None = None
    selection: str = ""
    selection_error: str | None = None
    # a backup drilled from the off-site repository: its repository, object key, stored and
    # plain hashes, encryption, manifest hash and fetch time (`path` is then its URL)
    origin: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxFacts:
    provider: str = "-"
    server_version: str = "-"
    database: str = ""
    identity: str = ""
    url: str = ""
    image: str = ""  # the docker provider's image
    note: str = ""  # why `auto` did not choose docker
    # the sandbox server's durability settings, as it reports them: the RTO was measured so
    durability: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IsolationFacts:
    """How application code was kept from production: `network` (new namespaces, only the
    sandbox reachable) or `environment only` (sealed environment), why, and what else was
    let through."""

    level: str = "environment only"
    reason: str = ""
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlembicFacts:
    before: str | None = None
    after: str | None = None
    heads: tuple[str, ...] = ()
    ok: bool | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class RtoFacts:
    """measured_s and met are None for a recovery that failed (failed_at says where)."""

    target_s: float = 0.0
    measured_s: float | None = None
    met: bool | None = None
    failed_at: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    other_phases: dict[str, float] = field(default_factory=dict)
    # what the earlier drills of this source forecast for this archive's size (see
    # backup_core.reading.forecast), and how; None without an earlier drill
    forecast_s: float | None = None
    forecast_how: str = ""
    # the sandbox server settings the RTO was measured under
    settings: str = ""


@dataclass(frozen=True)
class RpoFacts:
    """met is None when it cannot be judged (fewer than two backups)."""

    target_s: float = 0.0
    largest_gap_s: float | None = None
    newest_age_s: float | None = None
    met: bool | None = None
    summary: str = ""


@dataclass(frozen=True)
class IntegrationFacts:
    command: str = ""
    exit_code: int = 0
    duration_s: float = 0.0
    output_tail: str = ""
    cases: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class PitrFacts:
    """A point-in-time drill over pgBackRest: where it aimed, what it got, what was lost."""

    stanza: str = ""
    target: str | None = None
    target_choice: str = ""  # how the target was chosen (random with seed, or given)
    window_start: str | None = None
    window_end: str | None = None
    backup_label: str | None = None
    backup_type: str | None = None
    backup_stopped: str | None = None
    recovered_to: str | None = None
    wal_bytes: int | None = None
    wal_segments: int | None = None
    wal_spool_bytes: int | None = None  # the WAL fetched beforehand, removed once promoted
    newest_heartbeat: str | None = None
    data_loss_s: float | None = None
    failure: str = ""


@dataclass(frozen=True)
class DetectionFacts:
    """`--prove-detection`: the same drill over a deliberately damaged copy of the backup.
    `caught` is True when that drill failed, with the checks that caught the damage."""

    caught: bool = False
    damage: tuple[str, ...] = ()
    caught_by: tuple[str, ...] = ()
    verdict: str = ""
    error: str = ""


@dataclass(frozen=True)
class EvidenceFacts:
    """What the ledger adds to a report: the signing key, the controls served, and the proof
    that the drill can fail (set by `atb drill run`, after its child)."""

    key_fingerprint: str | None = None
    controls: tuple[str, ...] = ()
    detection: DetectionFacts | None = None

    @classmethod
    def from_dict(cls, data: object) -> EvidenceFacts | None:
        if not isinstance(data, dict):
            return None
        found = build(cls, data)
        detection = data.get("detection")
        return EvidenceFacts(found.key_fingerprint, found.controls,
                             build(DetectionFacts, detection) if detection else None)


def build(cls: type[T], data: object) -> T:
    """A record from a JSON object: known fields only, lists as tuples, the rest defaulted."""
    values = data if isinstance(data, dict) else {}
    kwargs = {f.name: tuple(values[f.name]) if isinstance(values[f.name], list)
              else values[f.name] for f in fields(cls) if f.name in values}  # type: ignore
    return cls(**kwargs)


@dataclass(frozen=True)
class DrillResult:
    verdict: str
    database: str
    started_at: str
    finished_at: str
    seed: int
    backup: BackupFacts
    sandbox: SandboxFacts
    alembic: AlembicFacts
    rto: RtoFacts
    rpo: RpoFacts
    integration: IntegrationFacts | None
    not_run: dict[str, str]
    checks: tuple[CheckRecord, ...]
    findings: tuple[str, ...]
    reports: dict[str, str]
    options: dict[str, Any]
    pitr: PitrFacts | None = None
    isolation: IsolationFacts | None = None
    evidence: EvidenceFacts | None = None
    # stopped by Ctrl-C (SIGINT) before its checks were over: INCOMPLETE at best, exit 130
    interrupted: bool = False
    schema: str = SCHEMA_ID
    schema_version: int = SCHEMA_VERSION

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillResult:
        """Read a JSON report back (tolerating the fields of earlier v1 reports)."""
        integration = data.get("integration")
        return cls(
            verdict=str(data.get("verdict", "FAIL")), database=str(data.get("database", "")),
            started_at=str(data.get("started_at", "")),
            finished_at=str(data.get("finished_at", "")), seed=int(data.get("seed", 0)),
            backup=build(BackupFacts, data.get("backup")),
            sandbox=build(SandboxFacts, data.get("sandbox")),
            alembic=build(AlembicFacts, data.get("alembic")),
            rto=build(RtoFacts, data.get("rto")), rpo=build(RpoFacts, data.get("rpo")),
            integration=build(IntegrationFacts, integration) if integration else None,
            pitr=build(PitrFacts, data["pitr"]) if data.get("pitr") else None,
            isolation=build(IsolationFacts, data["isolation"]) if data.get("isolation")
            else None,
            evidence=EvidenceFacts.from_dict(data.get("evidence")),
            not_run=dict(data.get("not_run") or {}),
            checks=tuple(build(CheckRecord, c) for c in data.get("checks") or ()),
            findings=tuple(data.get("findings") or ()),
            reports=dict(data.get("reports") or {}), options=dict(data.get("options") or {}),
            interrupted=bool(data.get("interrupted", False)))


def verdict_of(result: DrillResult, *, interrupted: bool) -> DrillVerdict:
    """What is recorded beside the drilled backup: the verdict, and whether the backup
    caused it (a failing check about its content or restore), so that a verdict it did not
    cause never hides an earlier PASS."""
    caused = caused_by_backup(result.verdict, {c.name: c.message for c in result.checks
                                               if c.outcome == "failed"},
                              interrupted=interrupted)
    return DrillVerdict(
        passed=result.passed, at=result.finished_at, report=result.reports.get("html", ""),
        rto_s=result.rto.measured_s, verdict=result.verdict, caused=caused,
        failed_checks=tuple(c.name for c in result.checks if c.outcome in ("failed", "error")))
