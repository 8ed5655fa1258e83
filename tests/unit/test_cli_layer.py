"""The command line's own pure parts: one renderer for every record, the core's decisions
each command renders (what each toolchain is for), and the checks that run before any work."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import pytest

from backup_core.ops import survey, verify
from backup_core.ops.health import Targets, check_health
from backup_core.tools.errors import ConfigError
from backup_core.tools.toolchain import SERVER_TOOLS, Toolchain
from drills.cli import output


@dataclass(frozen=True)
class _Row:
    path: Path
    at: datetime
    tags: tuple[str, ...]
    hidden: str = field(default="for people", metadata={"json": False})
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("ok",)

    @property
    def ok(self) -> bool:
        return bool(self.tags)


def test_a_record_is_its_fields_and_declared_properties_without_people_only_fields() -> None:
    at = datetime(2026, 11, 29, 21, 0, tzinfo=timezone(timedelta(hours=1)))
    row = _Row(Path("/b/x.dump"), at, ("a",))
    assert output.jsonable([row, {"n": (row,)}]) == [
        {"path": "/b/x.dump", "at": "2026-11-29T20:00:00+00:00", "tags": ["a"], "ok": True},
        {"n": [{"path": "/b/x.dump", "at": "2026-11-29T20:00:00+00:00", "tags": ["a"],
                "ok": True}]}]


def test_json_goes_to_stdout_sorted_and_text_is_what_the_command_makes_of_the_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = _Row(Path("p"), datetime(2026, 1, 1, tzinfo=UTC), ())
    output.show(row, as_json=True, text=lambda r: "unused")
    out = capsys.readouterr().out
    assert out == json.dumps({"at": "2026-01-01T00:00:00+00:00", "ok": False, "path": "p",
                              "tags": []}, indent=2) + "\n"
    output.show(row, as_json=False, text=lambda r: f"{r.path}: {r.hidden}")
    assert capsys.readouterr().out == "p: for people\n"


def test_a_table_of_records_has_a_column_per_reader_and_no_trailing_blanks() -> None:
    rows = [_Row(Path("a"), datetime(2026, 1, 1), ("x", "y")), _Row(Path("long/b"),
                                                                    datetime(2026, 1, 1), ())]
    columns: list[output.Column[_Row]] = [("path", lambda r: r.path),
                                          ("tags", lambda r: ",".join(r.tags))]
    assert output.records_table(rows, columns) == "path    tags\na       x,y\nlong/b"
    assert output.records_table([], columns) == "path  tags"


def _chain(tmp: Path, major: int, tools: tuple[str, ...]) -> Toolchain:
    bindir = tmp / str(major)
    bindir.mkdir()
    for tool in tools:
        (bindir / tool).write_text("#!/bin/sh\n")
        (bindir / tool).chmod(0o755)
    return Toolchain(bindir, f"{major}.1", "test")


def test_each_toolchain_is_listed_for_the_jobs_the_selection_rules_give_it(
    tmp_path: Path,
) -> None:
    full = _chain(tmp_path, 13, ("pg_dump", "pg_restore", *SERVER_TOOLS))
    client = _chain(tmp_path, 16, ("pg_dump", "pg_restore"))
    psql = _chain(tmp_path, 17, ("psql",))
    chains = [full, client, psql]
    assert survey.uses(full, chains) == ("pg_dump for servers 9-13",
                                         "pg_restore for archives 9-13",
                                         "sandbox server for dumps 9-13")
    assert survey.uses(client, chains) == ("pg_dump for servers 14-16",
                                           "pg_restore for archives 14-16")
    assert survey.uses(psql, chains) == ("not selected for any job",)


@pytest.mark.parametrize("given", [{}, {"latest": True, "all_": True},
                                   {"path": Path("x.dump"), "latest": True}])
def test_verify_wants_exactly_one_selection_before_reading_anything(
    given: dict[str, object], tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        verify.verify_selected(tmp_path / "missing", **given)  # type: ignore[arg-type]
    assert str(caught.value) == "give exactly one of PATH, --latest or --all"
    assert caught.value.exit_code == 2


def test_verify_of_an_empty_tree_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        verify.verify_selected(tmp_path, latest=True)
    assert str(caught.value) == f"no backups under {tmp_path} to verify"


def test_status_checks_its_targets_before_the_tree_and_refuses_an_empty_one(
    tmp_path: Path,
) -> None:
    prom = tmp_path / "metrics.prom"
    with pytest.raises(ConfigError) as caught:
        check_health(tmp_path / "missing", Targets(rpo="soon"), prometheus=prom)
    assert caught.value.exit_code == 2 and "--rpo" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        check_health(tmp_path, Targets(), prometheus=prom)
    assert str(caught.value) == f"no backups under {tmp_path}: run `atb db backup` first"
    assert not prom.exists()  # nothing written when nothing was judged


@pytest.mark.parametrize("command", [
    ("db", "list"), ("db", "prune"), ("db", "prune", "--dry-run"), ("db", "verify", "--latest"),
    ("db", "verify", "--all"), ("db", "status"), ("db", "push", "--repo", "s3://bucket/p")])
def test_a_backup_dir_that_does_not_exist_is_one_line_exit_2(
        command: tuple[str, ...], tmp_path: Path) -> None:
    """A mistyped BACKUP_DIR is said in one line, exit 2, by every command that reads the
    tree (list and prune said "no backups" and "0 kept" with exit 0: a crontab hid it)."""
    from tests.helpers import atb_inproc

    missing = tmp_path / "nonexistent"
    done = atb_inproc(*command, env={"BACKUP_DIR": str(missing)})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"atb: error: BACKUP_DIR {missing} does not exist "
                           "(`atb db backup` creates it)\n")
    (tmp_path / "file").write_text("x")
    done = atb_inproc(*command, env={"BACKUP_DIR": str(tmp_path / "file")})
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)  # click's own line
    assert "is a file" in done.stderr
    assert not missing.exists()


@pytest.mark.parametrize(("name", "value", "said"), [
    ("ATB_ISOLATION", "maybe", "ATB_ISOLATION='maybe' is not understood: leave it unset "
     "(isolate where the platform can) or set it to off"),
    ("PG_BINDIR", "/nonexistent", "PG_BINDIR '/nonexistent' is not a directory: point it at "
     "a PostgreSQL bin directory (holding pg_dump), or unset it"),
    ("PG_BINDIR", "EMPTY", "PG_BINDIR 'EMPTY' holds none of pg_dump, pg_restore, postgres: "
     "point it at a PostgreSQL bin directory, or unset it")])
@pytest.mark.parametrize("command", [("db", "list"), ("drill", "run"), ("doctor",)])
def test_an_environment_setting_atb_does_not_understand_is_exit_2_before_any_work(
        name: str, value: str, said: str, command: tuple[str, ...], tmp_path: Path) -> None:
    """ATB_ISOLATION=maybe let a drill run as if unset; PG_BINDIR=/nonexistent let a backup
    run with other binaries: both are one line and exit 2, whatever the command."""
    from tests.helpers import atb_inproc

    empty = tmp_path / "bin"
    empty.mkdir()
    value, said = value.replace("EMPTY", str(empty)), said.replace("EMPTY", str(empty))
    done = atb_inproc(*command, env={name: value, "BACKUP_DIR": str(tmp_path / "none")})
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"atb: error: {said}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # nothing made


def test_isolation_off_in_any_case_and_a_real_bin_directory_pass(tmp_path: Path) -> None:
    from backup_core.tools import namespaces, toolchain

    for value in ("", "off", "OFF", " off "):
        namespaces.check_switch({"ATB_ISOLATION": value})
    fake = tmp_path / "pg_restore"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    toolchain.check_pinned({"PG_BINDIR": str(tmp_path)})
    toolchain.check_pinned({})


@pytest.mark.parametrize("option", [("--alembic-config", "alembic.ini"), ("--app-dir", "."),
                                    ("--app-python", "/usr/bin/python3"),
                                    ("--app-url-env", "APP_DB"), ("--pass-env", "HOME")])
def test_a_migration_option_without_migrate_is_exit_2(
        option: tuple[str, str], tmp_path: Path) -> None:
    """restore --alembic-config without --migrate restored and migrated nothing, exit 0:
    the option was ignored in silence. Refused before anything is read or restored."""
    from tests.helpers import atb_inproc

    done = atb_inproc("db", "restore", str(tmp_path / "x.dump"), "--target-url",
                      "postgresql://app@127.0.0.1:1/r", *option)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"atb: error: atb db restore: {option[0]} needs --migrate (or --migrate-cmd): "
               "without it nothing is migrated\n")
