"""Drill logic that needs no server: picking, options, docker configuration, rendering."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.store.catalog import COMPLETE, NO_MANIFEST, Backup
from backup_core.tools.errors import AtbError, ConfigError
from drills import docker_engine, pick, report, sandbox
from drills.options import DrillOptions
from drills.result import CheckRecord, DrillResult
from drills.state import DrillState, ReportPaths, assemble

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def b(days_ago: float, state: str = COMPLETE, db: str = "trading") -> Backup:
    at = NOW - timedelta(days=days_ago)
    return Backup(path=Path(f"/b/{db}/backup-{at:%Y%m%dT%H%M%SZ}.dump"), database=db,
                  state=state, taken_at=at, size=1, mtime=0)


def test_pick_is_reproducible_and_uniform_over_the_window() -> None:
    items = [b(d) for d in range(0, 120)] + [b(1.5, NO_MANIFEST)]
    first = pick.pick(items, now=NOW, window_days=90, seed=7)
    assert first == pick.pick(items, now=NOW, window_days=90, seed=7)
    seen = {pick.pick(items, now=NOW, window_days=90, seed=s).path for s in range(400)}
    assert len(seen) > 70
    assert all((NOW - (x.taken_at or NOW)).days <= 90 for x in items if x.path in seen)
    assert not any(x.state != COMPLETE and x.path in seen for x in items)
    assert pick.picked(items, now=NOW, window_days=90, seed=7) == (first, 91)  # 0..90 days


def test_pick_fails_clearly_on_an_empty_window_or_several_databases() -> None:
    with pytest.raises(pick.NothingToDrill, match="no complete backup in the last 90 days"):
        pick.pick([b(200)], now=NOW, window_days=90, seed=1)
    with pytest.raises(pick.NothingToDrill, match="name one with --database"):
        pick.pick([b(1), b(1, db="other")], now=NOW, window_days=90, seed=1)
    assert pick.pick([b(1), b(2, db="other")], now=NOW, window_days=90, seed=1,
                     database="other").database == "other"


def test_options_round_trip_through_the_options_file(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    values = {"backup-dir": "/srv/b", "seed": "5", "rto-target": "30m", "sandbox": "local",
              "integration-cmd": "pytest -q tests", "checks": str(tmp_path / "mine"),
              "pass-env": "A,B", "drill-exclude": "indexes_are_valid"}
    opts = DrillOptions.from_values(values.get, lambda k: k == "strict-rpo", {})
    assert (opts.rto_target_s, opts.seed, opts.strict_rpo) == (1800, 5, True)
    assert (opts.pass_env, opts.exclude) == (("A", "B"), ("test_indexes_are_valid",))
    assert DrillOptions.from_json(opts.to_json(), {}) == opts
    secret = DrillOptions(sandbox_url="postgresql://u:hunter2@h/postgres")
    assert "hunter2" not in secret.to_json()
    assert DrillOptions.from_json(secret.to_json(), {"ATB_SANDBOX_URL": "postgresql://s/p"}
                                  ).sandbox_url == "postgresql://s/p"
    with pytest.raises(ConfigError):
        DrillOptions.from_values({"rpo-target": "soon"}.get, lambda k: False)
    long = DrillOptions.from_values({"schedule": "1000d"}.get, lambda k: False)
    assert DrillOptions.from_json(long.to_json(), {}).schedule_s == 86_400_000
    with pytest.raises(ConfigError, match="--drill-options: not a JSON object"):
        DrillOptions.from_json("[1]", {})


def test_options_defaults_and_environment_are_declared_once() -> None:
    """Not given, an option is its variable's value, else its declared default: the same
    value as the field's own default."""
    given = DrillOptions.from_values({"seed": "0"}.get, lambda k: False, {})
    assert replace(given, backup_dir=Path("backups")) == DrillOptions()
    env = {"BACKUP_DIR": "/srv/b", "ATB_DOCKER_IMAGE": "mirror/pg:{major}",
           "ATB_SANDBOX_URL": "postgresql://s/p"}
    from_env = DrillOptions.from_values({"seed": "0"}.get, lambda k: False, env)
    assert (from_env.backup_dir, from_env.docker_image, from_env.sandbox_url) == (
        Path("/srv/b"), "mirror/pg:{major}", "postgresql://s/p")
    assert DrillOptions.from_values({"seed": "0", "backup-dir": "/x"}.get, lambda k: False,
                                    env).backup_dir == Path("/x")


def test_sandbox_url_password_stays_out_of_reprs() -> None:
    opts = DrillOptions(sandbox_url="postgresql://u:hunter2@h/postgres")
    assert "hunter2" not in repr(opts)


def test_docker_sandbox_asks_for_the_image_with_durability_off() -> None:
    assert docker_engine.image_for(None, 15) == "postgres:15"
    assert docker_engine.image_for("mirror.example/postgis/postgis:{major}-3.4", 16) == \
        "mirror.example/postgis/postgis:16-3.4"
    assert docker_engine.image_for("atb-postgres:custom", 15) == "atb-postgres:custom"
    spec = docker_engine.container_spec("atb-postgres:15")
    assert spec.image == "atb-postgres:15"
    assert "-cfsync=off" in spec.command and "-cfull_page_writes=off" in spec.command
    assert spec.password and spec.password != docker_engine.container_spec("x").password


def test_auto_prefers_docker_only_when_the_engine_can_start_the_image() -> None:
    ok = docker_engine.Engine(True, "unix:///run/docker.sock")
    no_image = docker_engine.Engine(False, "unix:///run/docker.sock",
                                    "the image postgres:15 is not on the engine")
    assert sandbox.resolve_provider("auto", ok) == ("docker", "")
    provider, why = sandbox.resolve_provider("auto", no_image)
    assert provider == "local" and "postgres:15 is not on the engine" in why
    assert sandbox.resolve_provider("server", ok) == ("server", "")
    assert sandbox.resolve_provider("local", None) == ("local", "")
    with pytest.raises(ConfigError):
        sandbox.resolve_provider("kubernetes", None)


@pytest.mark.parametrize("host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"])
def test_the_engine_probe_says_where_it_looked_and_why_it_failed(
        host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_HOST is read by the Docker SDK as the CLI reads it; a dead one is a reason."""
    import time

    monkeypatch.setenv("DOCKER_HOST", host)
    t0 = time.monotonic()
    engine = docker_engine.probe("postgres:15", timeout=2)
    assert time.monotonic() - t0 < 10
    assert not engine.ok and engine.where == host
    assert f"no Docker engine answers at {host}" in engine.why
    with pytest.raises(AtbError, match="docker sandbox cannot start: no Docker engine"), \
            sandbox.open_sandbox("docker", source_major=15, chains=[]):
        pass


def test_only_a_local_engine_gets_loopback_ports() -> None:
    for where in ("unix:///var/run/docker.sock", "tcp://127.0.0.1:2375",
                  "tcp://localhost:2376", "tcp://[::1]:2375"):
        assert docker_engine.engine_is_local(where), where
    for where in ("tcp://10.0.0.5:2376", "ssh://ci@builder.example"):
        assert not docker_engine.engine_is_local(where), where


def _state(verdict_checks: list[tuple[str, str]]) -> DrillState:
    state = DrillState(options=DrillOptions(seed=3), started_at=NOW, production=None,
                       backup=b(10), selection_error=None,
                       paths=ReportPaths.for_drill(Path("/r"), "trading", NOW))
    state.checks = [CheckRecord(name=n, title=n, why="", outcome=o, duration_s=0.1,
                                evidence=("a | b",), message="boom\nmore") for n, o in
                    verdict_checks]
    state.phases = {"restore": 12.0, "migrate": 3.0, "integration": 50.0}
    return state


def test_verdict_and_rto_exclude_the_integration_suite() -> None:
    ok = _state([("x", "passed"), ("y", "finding")])
    assert ok.verdict() == "PASS" and ok.rto_s() == 15.0
    assert _state([("x", "passed"), ("y", "error")]).verdict() == "FAIL"
    assert _state([]).verdict() == "FAIL"


def test_a_skipped_or_deselected_builtin_check_makes_the_verdict_incomplete() -> None:
    skipped = _state([("x", "passed"), ("z", "skipped")])
    assert skipped.verdict() == "INCOMPLETE" and skipped.not_run() == {"z": "boom\nmore"}
    deselected = _state([("x", "passed")])
    deselected.builtin = ("x", "test_sequences_are_ahead_of_their_columns")
    assert deselected.verdict() == "INCOMPLETE"
    assert "test_sequences_are_ahead_of_their_columns" in deselected.not_run()
    result = deselected.result()
    assert result.rto.met is True and result.not_run  # completed: RTO measured
    assert "Not run" in report.to_markdown(result)


def test_a_failed_recovery_has_no_rto_only_the_phase_it_failed_in() -> None:
    failed = _state([("test_restore_completes_without_errors", "failed"), ("y", "passed")])
    assert failed.result().rto.failed_at == "checks"  # a check's phase is on its marker
    failed.check_phases = {"test_restore_completes_without_errors": "restore"}
    result = failed.result()
    assert result.rto.measured_s is None and result.rto.met is None
    assert result.rto.failed_at == "restore"
    assert "not measured: the recovery failed at restore" in report.to_markdown(result)


def test_markdown_and_html_summary_render_the_facts_and_escape_them() -> None:
    result = _state([("Restore completes", "failed")]).result()
    md = report.to_markdown(result)
    assert "**FAIL**" in md and "| Restore completes | FAILED | a \\| b |" in md
    assert "### Restore completes: failed" in md
    page = report.summary_html(result)
    assert "Verdict: FAIL" in page and "drill-failures" in page
    # measured before a check failed: said so, never "not measured" beside a measured RTO
    assert ("15s measured, target 1h 00m: not counted, a check of the restored database "
            "failed") in page and "not measured" not in page
    assert "15s measured" in report.summary_html(_state([("x", "passed")]).result())


def test_index_lists_drills_newest_first_with_a_trend(tmp_path: Path) -> None:
    for i, verdict_checks in enumerate(([("a", "passed")], [("a", "failed")])):
        state = _state(verdict_checks)
        state.started_at = NOW + timedelta(days=i)
        state.paths = ReportPaths.for_drill(tmp_path, "trading", state.started_at)
        report.write_reports(state.result())
    page = (tmp_path / "index.html").read_text()
    assert page.index("FAIL") < page.index("PASS")
    assert page.count("<circle") == 1  # a failed recovery is no point on the RTO trend
    assert "1 failed recovery not plotted" in page and "failed at checks" in page


def test_the_summary_block_carries_every_check_without_scripts() -> None:
    state = _state([("test_restore_completes_without_errors", "passed"),
                    ("test_indexes_are_valid", "failed"), ("test_heartbeat", "skipped")])
    state.builtin = ("test_restore_completes_without_errors", "test_indexes_are_valid",
                     "test_heartbeat", "test_foreign_keys_hold_for_every_row")
    page = report.summary_html(state.result())
    assert "<noscript><style>" in page and "#results-table" in page
    table = page[page.index("id='drill-checks'"):]
    for title in ("test_restore_completes_without_errors", "test_indexes_are_valid"):
        assert f"<b>{title}</b>" in table
    assert "FAILED" in table and "PASSED" in table and "SKIPPED" in table
    assert "a | b" in table and "boom" in table  # evidence and the failure text
    assert "Foreign keys hold for every row" in table and "NOT RUN" in table


def test_a_result_reads_back_from_its_json_unchanged() -> None:
    """The CLI reads its pytest child's result through `from_dict`: what the report says
    must survive the round trip, and an earlier v1 report (fewer fields) must still read."""
    state = _state([("test_restore_completes_without_errors", "failed"), ("y", "passed")])
    result = state.result()
    again = DrillResult.from_dict(json.loads(report.to_json(result)))
    assert again == result
    old = json.loads(report.to_json(result))
    for key in ("not_run",):
        old.pop(key)
    old["rto"].pop("failed_at")
    assert DrillResult.from_dict(old).verdict == "FAIL"


def test_each_drill_option_is_declared_once_for_click_pytest_and_ini(
    pytester: pytest.Pytester,
) -> None:
    import click

    from drills import cli
    from drills.options import OPTIONS

    params = {p.name: p for p in cli.drill_run.params}
    shown = pytester.runpytest_subprocess("--help").stdout.str()
    for o in OPTIONS:
        assert f"--{o.name}" in shown
        if o.kind != "flag":
            assert f"{o.dest} (" in shown  # the ini key, listed with its type
        if not o.cli:
            continue
        param = params[o.flag.replace("-", "_")]
        assert isinstance(param, click.Option) and o.help in (param.help or "")
        if o.default is not None:
            assert str(param.default).rstrip("0").rstrip(".") == o.default


def test_the_builtin_checks_are_imported_and_declare_their_phase() -> None:
    """The plugin knows its checks by importing them (not by parsing their source), and a
    check names the recovery phase its failure stops in on its own marker."""
    from drills import checks
    from drills.options import builtin_checks

    names = builtin_checks("dump")
    assert (len(names), names[0], names[-1]) == (
        21, "test_backup_integrity_matches_manifest", "test_production_was_not_touched")
    phases = {name: mark.kwargs["phase"] for name in names
              for mark in getattr(getattr(checks, name), "pytestmark", [])
              if mark.name == "drill" and "phase" in mark.kwargs}
    assert phases == {"test_backup_integrity_matches_manifest": "fetch/verify",
                      "test_archive_is_readable_by_the_runbook_pg_restore": "fetch/verify",
                      "test_restore_completes_without_errors": "restore",
                      "test_revision_before_upgrade_matches_the_backup": "migrate",
                      "test_alembic_upgrade_head_reaches_the_script_head": "migrate"}
    pitr = builtin_checks("pgbackrest")
    assert (len(pitr), pitr[:2]) == (10, ("test_recovery_reaches_the_target_time",
                                          "test_data_loss_is_within_the_rpo_target"))


def test_the_result_is_a_pure_function_of_the_recorded_state() -> None:
    state = _state([("Restore completes", "passed")])
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    first, second = assemble(state, finished_at=at), assemble(state, finished_at=at)
    assert first == second and first.finished_at == "2026-11-29T12:00:00+00:00"


def test_copy_facts_a_refused_connection_is_the_error_of_each_fact_asked_for(
        tmp_path: Path) -> None:
    """The facts read beside the read-back: a connection refused is raised by each check
    that judges one, as its own connection would have been, a fresh error each time (one
    object raised by several checks would pile up their tracebacks); a fact not asked for
    is None."""
    from backup_core.tools.conninfo import ConnInfo
    from backup_core.tools.errors import ConnectionFailed
    from drills import beside

    # a socket directory with no server in it: refused at once, no network
    url = ConnInfo.make(dbname="x", host=str(tmp_path), port=5432, user="u")
    facts = beside.copy_facts(url, wanted={"sequences", "keys"}, heartbeat_table="t",
                              archive=None)
    assert (facts.data, facts.indexes, facts.heartbeat) == (None, None, None)
    raised: list[BaseException] = []
    for fact in (facts.sequences, facts.keys, facts.keys):
        assert fact is not None
        with pytest.raises(ConnectionFailed, match=f"cannot connect to .*{tmp_path}") as exc:
            fact.get()
        raised.append(exc.value)
    assert len({id(e) for e in raised}) == 3  # fresh each time
    assert len({id(e.__cause__) for e in raised}) == 1  # from the one refusal
    assert isinstance(raised[0].__cause__, ConnectionFailed)
