"""What a drill learns as it runs, and the frozen `DrillResult` that reports render."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from backup_core.reading.guard import Observation
from backup_core.store.catalog import Backup
from backup_core.store.naming import dir_name
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.durations import plural
from backup_core.tools.errors import AtbError
from backup_core.tools.fsutil import make_dirs
from drills.options import DrillOptions
from drills.result import (
    AlembicFacts,
    BackupFacts,
    CheckRecord,
    DrillResult,
    IntegrationFacts,
    IsolationFacts,
    PitrFacts,
    RpoFacts,
    RtoFacts,
    SandboxFacts,
)

# Phases that make up the measured RTO, in the order a real recovery goes through them.
RTO_PHASES = ("fetch/verify", "sandbox start", "restore", "analyze", "restore files", "start",
              "WAL replay", "migrate", "checks")
# The phase a failing check stops a recovery in, unless its marker says another:
# `@pytest.mark.drill(phase="restore")`.
DEFAULT_PHASE = "checks"
T = TypeVar("T")
PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"
# where an interrupted recovery stopped, as its RTO says (`RtoFacts.failed_at`)
INTERRUPTED = "interrupted"


@dataclass
class ReportPaths:
    html: Path
    json: Path
    md: Path

    @classmethod
    def for_drill(cls, report_dir: Path, database: str, started: datetime, *,
                  claim: bool = False) -> ReportPaths:
        """`<dir>/<db>/<time>-drill.*`, the database directory named as in the backup tree.
        With `claim`, the JSON name is taken exclusively, so two drills started in the same
        second get `<time>-2-drill.*` rather than one report replacing the other."""
        folder = report_dir / dir_name(database)
        for n in range(1, 1000):
            stem = f"{started:%Y%m%dT%H%M%SZ}" + (f"-{n}" if n > 1 else "") + "-drill"
            paths = cls(folder / f"{stem}.html", folder / f"{stem}.json", folder / f"{stem}.md")
            if not claim:
                return paths
            try:
                make_dirs(folder)
                os.close(os.open(paths.json, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return paths
            except FileExistsError:
                continue
        raise AtbError(f"cannot name a report in {folder}: 999 drills started in one second")



@dataclass
class DrillState:
    """The drill's session: what was chosen at the start, the frozen outcomes the fixtures
    record as they produce them (sandbox, Alembic, RPO, integration, point-in-time, phase
    timings), and the check records the reporting hook collects. Checks read it; they never
    write into it. `result` assembles the `DrillResult` from it."""

    options: DrillOptions
    started_at: datetime
    production: ConnInfo | None
    backup: Backup | None
    selection_error: str | None
    paths: ReportPaths
    phases: dict[str, float] = field(default_factory=dict)
    # how many backups the random pick chose among
    eligible: int = 0
    # set once, when the checks are over (`collect`), from the reporting hook's records
    checks: list[CheckRecord] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    check_phases: dict[str, str] = field(default_factory=dict)
    # per test node id, filled by the reporting hook as reports arrive
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    integration: IntegrationFacts | None = None
    sandbox: SandboxFacts | None = None
    alembic: AlembicFacts | None = None
    rpo: RpoFacts | None = None
    pitr: PitrFacts | None = None
    isolation: IsolationFacts | None = None
    checks_started: float | None = None
    production_before: Observation | None = None
    # the backup tree as scanned to pick from (None with --backup): read once per drill
    tree: list[Backup] | None = None
    # the RTO the earlier drills forecast for this backup, and how (see drill_policy)
    rto_forecast: tuple[float, str] | None = None
    # the sandbox server settings the restore ran under (tuned, or the server's defaults)
    rto_settings: str = ""
    # names of the built-in checks: each must run and pass for a PASS
    builtin: tuple[str, ...] = ()
    # told of each phase starting and done (name, "start" or "done", seconds): the progress
    # channel to `atb drill run` (drills.plugin.progress)
    on_phase: Callable[[str, str, float], None] | None = None
    # told of a warning as it happens (`auto` chose a local sandbox): shown by `atb drill run`
    on_note: Callable[[str], None] | None = None
    # a check file (or conftest) that could not be imported or collected: the drill's
    # configuration, not its backup; it ends with this one line and no report (`config_error`)
    collection_error: str | None = None
    # set when the drill was interrupted (Ctrl-C, SIGINT from `atb drill run`)
    interrupted: bool = False

    @property
    def reachable_production(self) -> ConnInfo | None:
        """Production when the drill host reached it at the start, else None: a production
        out of reach (the usual CI case) is not asked again, and so costs no timeouts inside
        the measured phases."""
        return self.production if self.production_before is not None else None

    @property
    def database(self) -> str:
        if self.backup is not None:
            return self.backup.database
        return self.options.database or self.options.stanza or "unknown"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        if self.on_phase is not None:
            self.on_phase(name, "start", 0.0)
        ended = "done"  # a phase an error or an interrupt ended is not said to be done
        try:
            yield
        except KeyboardInterrupt:
            ended = "interrupted"
            raise
        except Exception:
            ended = "failed"
            raise
        except BaseException as exc:  # pytest's outcomes: a skip is the phase's own end
            import pytest  # raised it: imported already

            ended = "failed" if isinstance(exc, pytest.fail.Exception) else "done"
            raise
        finally:
            spent = time.monotonic() - t0
            self.phases[name] = round(self.phases.get(name, 0.0) + spent, 3)
            if self.on_phase is not None:
                self.on_phase(name, ended, spent)

    def timed(self, inner: contextlib.AbstractContextManager[T], *, enter: str | None,
              leave: str) -> contextlib.AbstractContextManager[T]:
        """`inner` with its entry timed as phase `enter` (unless None) and its exit as `leave`;
        the exit still sees the exception, as if `inner` were used directly."""
        return _Timed(self, inner, enter, leave)

    def collect(self) -> None:
        """The checks are over: their records (in the order they ran), the findings they
        recorded, and the recovery phase each declared."""
        runs = list(self.records.values())
        self.checks = [CheckRecord(name=r["name"], title=r["title"], why=r["why"],
                                   outcome=r["outcome"] or "error", duration_s=r["duration_s"],
                                   evidence=tuple(r.get("evidence", ())), message=r["message"])
                       for r in runs]
        self.findings = [f for r in runs for f in r.get("findings", ())]
        self.check_phases = {r["name"]: r.get("phase", DEFAULT_PHASE) for r in runs}

    def rto_s(self) -> float:
        return round(sum(self.phases.get(p, 0.0) for p in RTO_PHASES), 3)

    def verdict(self) -> str:
        """PASS only when every built-in check ran and passed (a finding counts as run);
        INCOMPLETE when one was skipped or not collected; FAIL on any failure."""
        if self.selection_error:
            return FAIL
        if any(c.outcome in ("failed", "error") for c in self.checks):
            return FAIL
        if self.interrupted:  # what did not run was not judged: never a PASS, nor a FAIL
            return INCOMPLETE
        if not self.checks:
            return FAIL
        return INCOMPLETE if self.not_run() else PASS

    def not_run(self) -> dict[str, str]:
        """Built-in checks that did not run, with the reason."""
        outcomes = {c.name: c for c in self.checks}
        missing = {name: "excluded with --drill-exclude" if name in self.options.exclude
                   else "not run: interrupted" if self.interrupted
                   else "not collected (deselected)" for name in self.builtin
                   if name not in outcomes}
        skipped = {c.name: c.message or "skipped" for c in self.checks
                   if c.outcome == "skipped" and (not self.builtin or c.name in self.builtin)}
        return {**missing, **skipped}

    def failed_at(self) -> str | None:
        """The recovery phase of the first failed check, in recovery order."""
        failed = [c.name for c in self.checks if c.outcome in ("failed", "error")]
        if self.interrupted and not failed and not self.selection_error:
            return INTERRUPTED
        if self.selection_error or not self.checks:
            return "fetch/verify"
        if not failed:
            return None
        phases = [self.check_phases.get(name, DEFAULT_PHASE) for name in failed]
        return min(phases, key=RTO_PHASES.index)

    def _pitr_backup(self) -> BackupFacts:
        p = self.pitr
        assert p is not None
        stopped = datetime.fromisoformat(p.backup_stopped) if p.backup_stopped else None
        return BackupFacts(
            path=f"pgBackRest stanza {p.stanza}, {p.backup_type} backup {p.backup_label}"
            if p.backup_label else f"pgBackRest stanza {p.stanza}",
            taken_at=p.backup_stopped,
            age_s=round((self.started_at - stopped).total_seconds(), 1) if stopped else None,
            selection=f"target {p.target or '-'}: {p.target_choice or '-'}",
            selection_error=p.failure or None if not p.backup_label else None)

    def result(self) -> DrillResult:
        """The drill's frozen result as the state stands now (`assemble`)."""
        return assemble(self, finished_at=datetime.now(UTC))



def assemble(state: DrillState, *, finished_at: datetime) -> DrillResult:
    """The drill's frozen result from what the session recorded: a pure function of its
    arguments (it reads the state and changes nothing), called once when the checks are over."""
    b = state.backup
    m = b.manifest if b else None
    age = (state.started_at - b.taken_at).total_seconds() if b and b.taken_at else None
    origin = origin_facts(state.options.origin)
    url, how = origin.pop("url", None), origin.pop("selection", None)
    return DrillResult(
        verdict=state.verdict(),
        database=state.database,
        started_at=state.started_at.isoformat(timespec="seconds"),
        finished_at=finished_at.isoformat(timespec="seconds"),
        seed=state.options.seed,
        backup=state._pitr_backup() if state.pitr else BackupFacts(
            path=url or (str(b.path) if b else None),
            taken_at=b.taken_at.isoformat() if b and b.taken_at else None,
            age_s=round(age, 1) if age is not None else None,
            size_bytes=b.size if b else None,
            sha256=m.sha256 if m else None,
            pg_dump_version=m.pg_dump_version if m else None,
            source_server_version=m.server_version if m else None,
            alembic_revision=m.alembic_revision if m else None,
            tables=len(m.row_counts) if m else None,
            rows=sum(m.row_counts.values()) if m else None,
            row_counts_mode=m.row_counts_mode if m else None,
            selection=how or (f"given with --backup {state.options.backup}"
                              if state.options.backup else
                              f"random among {plural(state.eligible, 'complete backup')} "
                              f"of the last {state.options.window_days:g} days (seed "
                              f"{state.options.seed})"),
            selection_error=state.selection_error, origin=origin),
        sandbox=state.sandbox or SandboxFacts(),
        alembic=state.alembic or AlembicFacts(),
        rto=RtoFacts(
            measured_s=None if state.failed_at() else state.rto_s(),
            target_s=state.options.rto_target_s,
            met=None if state.failed_at() else state.rto_s() <= state.options.rto_target_s,
            failed_at=state.failed_at(),
            phases={p: state.phases[p] for p in RTO_PHASES if p in state.phases},
            other_phases={p: v for p, v in state.phases.items() if p not in RTO_PHASES},
            forecast_s=state.rto_forecast[0] if state.rto_forecast else None,
            forecast_how=state.rto_forecast[1] if state.rto_forecast else "",
            settings=state.rto_settings),
        rpo=state.rpo or RpoFacts(target_s=state.options.rpo_target_s),
        integration=state.integration,
        pitr=state.pitr, isolation=state.isolation,
        not_run=state.not_run(),
        interrupted=state.interrupted,
        checks=tuple(state.checks),
        findings=tuple(state.findings),
        reports={"html": str(state.paths.html), "json": str(state.paths.json),
                 "md": str(state.paths.md)},
        options={"window_days": state.options.window_days, "sandbox": state.options.sandbox,
                 "alembic_config": str(state.options.alembic_config or ""),
                 "integration_cmd": state.options.integration_cmd or "",
                 "rto_target_s": state.options.rto_target_s,
                 "rpo_target_s": state.options.rpo_target_s,
                 "schedule_s": state.options.schedule_s,
                 "strict_rpo": state.options.strict_rpo},
    )


def check_message(exc: BaseException) -> str:
    """What a check's failure says: its exception's text; for a fixture pytest cannot give
    (none of that name, a recursive one), pytest's own first line naming it, not the repr of
    the exception's arguments (its request)."""
    import pytest  # the drill's child: imported already

    if isinstance(exc, pytest.FixtureLookupError):
        said = exc.formatrepr().errorstring.strip().splitlines()
        return said[0].strip() if said else f"fixture {exc.argname!r} not found"
    return str(exc)


def origin_facts(text: str | None) -> dict[str, str]:
    """The facts `atb drill run --repo` gave of where the backup came from (`--origin`,
    JSON), as text; none for a backup of the local tree."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class _Timed(contextlib.AbstractContextManager[T]):
    """See `DrillState.timed`."""

    def __init__(self, drill: DrillState, inner: contextlib.AbstractContextManager[T],
                 enter: str | None, leave: str) -> None:
        self.drill, self.inner, self.enter, self.leave = drill, inner, enter, leave

    def __enter__(self) -> T:
        with self.drill.phase(self.enter) if self.enter else contextlib.nullcontext():
            return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        with self.drill.phase(self.leave):
            return self.inner.__exit__(*exc)
