"""The application's environment: the URL it sees, the variables it gets, what names
production, and the line that says why a migration failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup_core.ops.migrate import MigrateResult, error_line
from backup_core.tools.appenv import (
    AppEnv,
    check_url_env,
    names_production,
    refuse_production_env,
)
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConfigError

SANDBOX = ConnInfo.make(dbname="atb_drill_1", host="/tmp/relay", port=5432, user="postgres")
PROD = ConnInfo.parse("postgresql+asyncpg://app:s3cret@db.internal:5433/shop", what="test")


def test_the_application_gets_the_copy_in_productions_form_under_its_own_names(
        tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    app = AppEnv(directory=tmp_path, python=venv / "bin" / "python",
                 url_env=("PREFECT_API_DATABASE_CONNECTION_URL",), pass_env=("PREFECT_HOME",),
                 dialect="postgresql+asyncpg")
    env = app.environ(SANDBOX, base={"PATH": "/usr/bin", "PREFECT_HOME": "/srv/p",
                                     "DATABASE_URL": PROD.secret_url, "SECRET_KEY": "x"})
    url = "postgresql+asyncpg://postgres@/atb_drill_1?host=%2Ftmp%2Frelay&port=5432"
    assert env["DATABASE_URL"] == env["PREFECT_API_DATABASE_CONNECTION_URL"] == url
    assert env["PATH"] == f"{venv / 'bin'}:/usr/bin"
    assert env["VIRTUAL_ENV"] == str(venv)
    assert env["PREFECT_HOME"] == "/srv/p"
    assert (env["PGHOST"], env["PGDATABASE"]) == ("/tmp/relay", "atb_drill_1")
    assert "SECRET_KEY" not in env


def test_app_url_env_takes_variable_names_but_none_libpq_or_atb_reads() -> None:
    assert check_url_env(["OPTUNA_STORAGE", "OPTUNA_STORAGE", "X_URL"]) == (
        "OPTUNA_STORAGE", "X_URL")
    for bad, why in [("PGHOST", "a libpq or atb variable"), ("ATB_SANDBOX_URL", "a libpq"),
                     ("MY-URL", "is not an environment variable name")]:
        with pytest.raises(ConfigError, match=why):
            check_url_env([bad])


@pytest.mark.parametrize("value", [
    "postgresql+asyncpg://app:s3cret@db.internal:5433/shop",
    "postgresql://db.internal:5433/shop?sslmode=require",
    "host=db.internal port=5433 dbname=shop user=app",
    '{"storage": "postgresql+psycopg2://app@db.internal:5433/shop"}',
    "jdbc:postgresql://db.internal:5433/shop",
    "db.internal:5433/shop",
])
def test_a_value_that_names_production_in_any_form(value: str) -> None:
    assert names_production(value, PROD)


@pytest.mark.parametrize("value", [
    "postgresql+asyncpg://app:s3cret@db.internal:5433/other",
    "postgresql://elsewhere:5433/shop",
    "redis://cache:6379/0",
    "/srv/prefect-home",
    "",
])
def test_a_value_that_does_not_name_production(value: str) -> None:
    assert not names_production(value, PROD)


def test_pass_env_naming_production_is_refused_with_the_way_out() -> None:
    env = {"OPTUNA_STORAGE": "postgresql://app@db.internal:5433/shop", "HOME": "/root"}
    refuse_production_env(["HOME"], PROD, env)
    refuse_production_env(["OPTUNA_STORAGE"], None, env)
    with pytest.raises(ConfigError) as caught:
        refuse_production_env(["HOME", "OPTUNA_STORAGE"], PROD, env)
    assert str(caught.value) == (
        "--pass-env OPTUNA_STORAGE: its value names the production database "
        "(postgresql://app:***@db.internal:5433/shop); pass the sandbox's URL under that name "
        "with --app-url-env OPTUNA_STORAGE instead")
    assert caught.value.exit_code == 2


def test_the_error_line_is_the_exception_not_sqlalchemys_pointer() -> None:
    out = ("Traceback (most recent call last):\n  File \"env.py\", line 3, in <module>\n"
           "    raise x\nsqlalchemy.exc.OperationalError: (psycopg.OperationalError) "
           "connection refused\n(Background on this error at: https://sqlalche.me/e/20/e3q8)\n")
    assert error_line(out) == ("sqlalchemy.exc.OperationalError: (psycopg.OperationalError) "
                               "connection refused")
    assert error_line("FAILED: Can't locate revision identified by 'x'\n") == (
        "FAILED: Can't locate revision identified by 'x'")
    assert error_line("make: *** [migrate] Error 2\n") == "make: *** [migrate] Error 2"


def test_a_migration_commands_result_reads_as_the_command() -> None:
    failed = MigrateResult(ok=False, before="a", after="a", heads=(), duration_s=1.0,
                           output="", error="boom", command="prefect server database upgrade -y",
                           exit_code=3)
    assert failed.problem == "`prefect server database upgrade -y` failed (exit 3): boom"
    unknown_head = MigrateResult(ok=True, before="a", after="b", heads=(), duration_s=1.0,
                                 output="", command="optuna storage upgrade")
    assert (unknown_head.at_head, unknown_head.problem) == (True, "")
    behind = MigrateResult(ok=True, before="a", after="a", heads=("b",), duration_s=1.0,
                           output="", command="alembic -c alembic.ini upgrade head")
    assert behind.problem == ("`alembic -c alembic.ini upgrade head` reported success but the "
                              "copy is at a, not the script head b: its env.py may connect to "
                              "another database")


def test_alembic_keeps_the_inis_driver_when_productions_url_names_none() -> None:
    from backup_core.ops.alembic_child import with_driver

    sandbox = "postgresql://postgres@/atb_drill_1?host=%2Ftmp%2Frelay"
    assert with_driver(sandbox, "postgresql+asyncpg://app@db/shop") == (
        "postgresql+asyncpg://postgres@/atb_drill_1?host=%2Ftmp%2Frelay")
    assert with_driver(sandbox, "driver://user:pass@localhost/dbname") == sandbox
    assert with_driver(sandbox, None) == sandbox
    assert with_driver("postgresql+psycopg2://x@/d", "postgresql+asyncpg://a@b/c") == (
        "postgresql+psycopg2://x@/d")


def test_production_changed_is_exit_8_in_a_drill_as_in_restore_migrate() -> None:
    from backup_core.tools.errors import ProductionTouched
    from drills.cli.drill import drill_exit_code
    from drills.result import DrillResult

    def result(verdict: str, untouched: str) -> DrillResult:
        return DrillResult.from_dict({"verdict": verdict, "checks": [
            {"name": "test_restore_completes_without_errors", "outcome": "passed"},
            {"name": "test_production_was_not_touched", "outcome": untouched}]})

    assert ProductionTouched.exit_code == 8
    assert [drill_exit_code(result("PASS", "passed")), drill_exit_code(result("FAIL", "passed")),
            drill_exit_code(result("INCOMPLETE", "passed")),
            drill_exit_code(result("FAIL", "failed")),
            drill_exit_code(result("FAIL", "error"))] == [0, 1, 10, 8, 8]


def test_alembic_heads_output_is_read_line_by_line() -> None:
    from backup_core.ops.migrate import parse_heads

    out = ("INFO  [alembic.runtime.migration] Context impl.\nv3.2.0.a (head)\n"
           "b2 (effective head)\nab12 (head)\n")
    assert parse_heads(out) == ("ab12", "v3.2.0.a")
    assert parse_heads("") == ()
