"""Small crashes turned into one line and a documented exit: a database named with `=`,
hostile heartbeat tables, and empty or huge values for every text and path option."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from drills import cli, docs
from tests.conftest import make_database
from tests.helpers import atb_inproc, fingerprint


def test_a_database_named_with_an_equals_sign_is_backed_up_and_verified(
    pg15: Cluster, tmp_path: Path
) -> None:
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "odd=name dbname=postgres"')
    info = pg15.url("odd=name dbname=postgres")
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    env = {"BACKUP_DIR": str(tmp_path / "b")}
    done = atb_inproc("db", "backup", "--json", env=env, url=info)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["manifest"]["database"] == "odd=name dbname=postgres"
    roles = Path(result["path"].replace(".dump", ".roles.sql")).read_text()
    assert 'CREATE ROLE postgres' in roles
    verified = atb_inproc("db", "verify", "--latest", env=env)
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout


HOSTILE_TABLES = ['system_events"; DROP TABLE orders; --', "public.system_events.x", "x" * 8000,
                  "", "a\0b", "..", "'quoted'"]


def test_hostile_heartbeat_tables_are_exit_2_with_one_line(
    pg15: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = make_database(pg15, rows=10)
    before = fingerprint(info)
    monkeypatch.setenv("DATABASE_URL", info.secret_url)
    for table in HOSTILE_TABLES:
        for check in ((), ("--check",)):
            code = cli.run(["tests", "heartbeat", "--table", table, *check])
            err = capsys.readouterr().err
            assert code == 2, (table[:40], err)
            assert err.startswith("atb: error: ") and err.count("\n") == 1, err
    assert fingerprint(info) == before
    assert cli.run(["tests", "heartbeat", "--table", "public.system_events"]) == 0


def _checked_params() -> list[tuple[str, click.Parameter]]:
    return [(path, p) for path, cmd in docs._commands(cli.cli, "atb") for p in cmd.params
            if isinstance(p.type, cli.Checked)]


@pytest.mark.parametrize("value", ["", "v" * 100_000], ids=["empty", "100kB"])
def test_empty_and_huge_values_of_every_option_are_exit_2_with_one_line(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written, here or anywhere
    tried = []
    for path, param in _checked_params():
        assert isinstance(param.type, cli.Checked)
        if not value and param.type.empty_ok:
            continue
        given = [param.opts[0], value] if isinstance(param, click.Option) else [value]
        code = cli.run([*path.split()[1:], *given])
        err = capsys.readouterr().err
        assert code == 2, (path, param.name, err[:300])
        assert err.startswith("atb: error: ") and err.count("\n") == 1, (path, err[:300])
        assert ("is empty" if not value else "characters long") in err
        tried.append(f"{path} {param.opts[0]}")
    assert len(tried) > 40 and "atb db backup --backup-dir" in tried
    assert "atb db status --prometheus" in tried and "atb demo --report-dir" in tried
    assert list(tmp_path.iterdir()) == []
