"""Pure parts of restore safety, option checks and probes: settings copied as the server
stores them, table names by allow-list, every exit code documented, probes sealed."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import click
import pytest

import backup_core
import drills
from backup_core.ops import heartbeat
from backup_core.reading import target
from backup_core.tools import toolchain
from backup_core.tools.errors import AtbError, ConfigError
from drills import cli


def test_list_settings_are_split_and_quoted_as_the_server_stores_them() -> None:
    assert target.split_guc_list('app, "My Schema", public') == ["app", "My Schema", "public"]
    assert target.split_guc_list('"a,b", "say ""hi"""') == ["a,b", 'say "hi"']
    assert target.split_guc_list("") == []
    assert target.split_guc_list("$user, public") == ["$user", "public"]


def test_leftovers_are_found_by_the_names_restores_give_even_when_shortened() -> None:
    for name in ("trading", "x" * 60, "é" * 40):
        staging, old = target.leftover_prefixes(name)
        assert target.staging_name(name).startswith(staging) and len(staging) < 63
        assert len(target._name(name, "_old_20261129T120000Z").encode()) <= 63
        assert target._name(name, "_old_20261129T120000Z").startswith(old)
    assert target.leftover_prefixes("trading") == ("trading_atb_staging_", "trading_old_")


def test_heartbeat_table_names_are_an_allow_list() -> None:
    assert heartbeat.table_parts("system_events") == ("system_events",)
    assert heartbeat.table_parts("app.SystemEvent") == ("app", "SystemEvent")
    for bad in ("", "a\"b", "a.b.c", "'; DROP TABLE orders; --", "x" * 10_000, "a\0b", ".",
                "a.", "1abc", "a b", "x" * 64):
        with pytest.raises(ConfigError, match="is not a table name"):
            heartbeat.table_parts(bad)


def _subclasses(cls: type[AtbError]) -> set[type[AtbError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_exit_code_of_our_errors_is_documented() -> None:
    for package in (backup_core, drills):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith(".__main__"):
                importlib.import_module(module.name)
    documented = {int(m) for m in re.findall(r"^\s+(\d+)\s", cli.EXIT_CODES, re.MULTILINE)}
    codes = {c.exit_code for c in _subclasses(AtbError)} | {AtbError.exit_code}
    assert 9 in codes and codes <= documented, codes - documented


def test_every_text_and_path_parameter_is_checked() -> None:
    def walk(group: click.Group) -> list[click.Parameter]:
        out: list[click.Parameter] = []
        for command in group.commands.values():
            out += walk(command) if isinstance(command, click.Group) else command.params
        return out

    cli.cli.load_all()  # the groups are imported on first use
    params = walk(cli.cli)
    unchecked = [p.name for p in params if isinstance(p.type, (click.Path,
                                                               click.types.StringParamType))]
    assert unchecked == []
    checked = {p.name for p in params if isinstance(p.type, cli.Checked)}
    assert {"backup_dir", "report_dir", "alembic_config", "prom_file", "table", "path",
            "checks", "integration_cmd"} <= checked


def test_version_probes_get_the_sealed_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen = tmp_path / "env.txt"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, out in (("pg_dump", "pg_dump (PostgreSQL) 15.4"), ("pg_config", str(bindir))):
        script = bindir / name
        script.write_text(f"#!/bin/sh\nenv >> {seen}\necho '{out}'\n")
        script.chmod(0o755)
    monkeypatch.setenv("PGPASSWORD", "canary-pw-1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:canary-pw-2@h/db")
    chain = toolchain.probe(bindir, "test")
    assert chain is not None and chain.version == "15.4"
    assert toolchain._pg_config_bindir(str(bindir)) == bindir
    env = seen.read_text()
    assert env.count("PATH=") >= 2  # both probes ran, with the allow-listed variables
    assert "canary-pw" not in env and "PGPASSWORD" not in env and "DATABASE_URL" not in env
