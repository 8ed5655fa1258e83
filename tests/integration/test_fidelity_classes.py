"""Every object class comes back, and the four silent faults of issue 21 are named.

One production database on PostgreSQL 15 uses every object class the drill compares (row
security and policies, large objects, a materialized view, a publication, an event trigger,
default privileges, a cast, collations, text search, a foreign server, statistics, comments);
it is backed up once. Each fault is then a properly resealed archive: `pg_dump` of a scratch
copy with the damage made in it (or `--no-blobs`), the manifest kept as production recorded it
and resealed over the new bytes, so only content and definitions can tell.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.reading import inventory
from backup_core.store.manifest import read_manifest, write_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools import childenv, db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.commands import pg_restore_list_argv
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.runner import run
from tests.helpers import atb_inproc, copy_backup, drill

RICH = """
CREATE SCHEMA audit;
COMMENT ON SCHEMA audit IS 'audit trail';
CREATE EXTENSION pg_trgm;
CREATE TABLE tenants_data (id serial PRIMARY KEY, tenant text NOT NULL, body text, doc oid);
COMMENT ON TABLE tenants_data IS 'rows per tenant';
COMMENT ON COLUMN tenants_data.tenant IS 'owner tenant';
CREATE INDEX body_trgm ON tenants_data USING gin (body gin_trgm_ops);
ALTER TABLE tenants_data ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants_data FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants_data USING (tenant = current_user);
CREATE POLICY tenant_insert ON tenants_data FOR INSERT WITH CHECK (tenant = current_user);
COMMENT ON POLICY tenant_isolation ON tenants_data IS 'one tenant each';
INSERT INTO tenants_data(tenant, body, doc)
  SELECT 't' || (g % 3), md5(g::text), lo_from_bytea(0, convert_to('document ' || g, 'UTF8'))
  FROM generate_series(1, 5) g;
CREATE TABLE audit.log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), what text,
                        a int, b int);
INSERT INTO audit.log(what, a, b) SELECT 'e' || g, g % 7, g % 5 FROM generate_series(1, 50) g;
CREATE TABLE audit.codes (id int PRIMARY KEY);
INSERT INTO audit.codes SELECT generate_series(0, 6);
ALTER TABLE audit.log ADD CONSTRAINT log_a_fk FOREIGN KEY (a) REFERENCES audit.codes;
INSERT INTO audit.log(what, a, b) VALUES ('orphan', 0, 42);
ALTER TABLE audit.log ADD CONSTRAINT log_b_fk FOREIGN KEY (b) REFERENCES audit.codes NOT VALID;
ALTER TABLE audit.log ENABLE ROW LEVEL SECURITY;
CREATE POLICY auditors ON audit.log FOR SELECT USING (a >= 0);
CREATE STATISTICS audit.log_ab (dependencies, ndistinct) ON a, b FROM audit.log;
CREATE MATERIALIZED VIEW audit.summary AS SELECT a, count(*) AS n FROM audit.log GROUP BY a;
CREATE PUBLICATION audit_pub FOR TABLE audit.log;
CREATE FUNCTION audit.note_ddl() RETURNS event_trigger LANGUAGE plpgsql
  AS $$BEGIN RAISE NOTICE 'ddl'; END$$;
CREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION audit.note_ddl();
ALTER DEFAULT PRIVILEGES IN SCHEMA audit GRANT SELECT ON TABLES TO PUBLIC;
CREATE TYPE audit.level AS ENUM ('low', 'high');
CREATE FUNCTION audit.level_of(text) RETURNS audit.level LANGUAGE sql IMMUTABLE
  AS $$SELECT CASE WHEN $1 = 'h' THEN 'high'::audit.level ELSE 'low'::audit.level END$$;
CREATE CAST (text AS audit.level) WITH FUNCTION audit.level_of(text);
COMMENT ON FUNCTION audit.level_of(text) IS 'text to level';
CREATE COLLATION audit.german (provider = icu, locale = 'de-DE');
CREATE COLLATION audit.posix_c (provider = libc, locale = 'C');
CREATE TEXT SEARCH DICTIONARY audit.simple_dict (TEMPLATE = pg_catalog.simple,
                                                 STOPWORDS = english);
CREATE TEXT SEARCH CONFIGURATION audit.cfg (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION audit.cfg ALTER MAPPING FOR word WITH audit.simple_dict;
CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER archive_srv FOREIGN DATA WRAPPER dummy_fdw OPTIONS (host 'archive', port '5432');
CREATE FOREIGN TABLE audit.remote_log (id int, what text) SERVER archive_srv;
"""


@pytest.fixture(scope="module")
def rich(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[ConnInfo, Path]]:
    """Production with every object class, and its one backup."""
    name = f"rich_{hashlib.md5(str(tmp_path_factory.getbasetemp()).encode()).hexdigest()[:8]}"
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                     "ICU_LOCALE 'en-US' LOCALE 'C.utf8'")  # production sorts by ICU
    info = pg15.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute(RICH)
        first = conn.execute("SELECT min(doc) FROM tenants_data").fetchone()
        assert first is not None
        conn.execute(f"COMMENT ON LARGE OBJECT {int(first[0])} IS 'first document'")
    path = create_backup(info, tmp_path_factory.mktemp("rich") / "backups").path
    yield info, path


def damaged(rich: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path, *, sql: str = "",
            dump_args: tuple[str, ...] = (), definitions: dict[str, str] | None = None
            ) -> Path:
    """The backup's copy whose dump is `pg_dump` of a scratch copy of production damaged by
    `sql` (with `dump_args`), its manifest production's own (with `definitions` changed),
    resealed over the new bytes."""
    info, path = rich
    copy = copy_backup(path, tmp_path / "damaged")
    scratch = f"{info.dbname}_{tmp_path.name[-12:].lower()}"
    scratch = "".join(c if c.isalnum() else "_" for c in scratch)
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {scratch} TEMPLATE {info.dbname}")
    try:
        if sql:
            with db.connect(info.with_dbname(scratch), autocommit=True) as conn:
                conn.execute(sql)
        chain = toolchain.for_dump(15, toolchain.discover())
        out = tmp_path / "scratch.dump"
        with childenv.for_tool(info.with_dbname(scratch)) as (conninfo, tool_env):
            run([chain.tool("pg_dump"), "--format=custom", f"--file={out}", *dump_args,
                 f"--dbname={conninfo}"], what="pg_dump", env=tool_env)
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {scratch}")
    data = out.read_bytes()
    copy.write_bytes(data)
    entries = run(pg_restore_list_argv(chain, copy), what="pg_restore --list").stdout
    m = read_manifest(manifest_path(copy))
    write_manifest(manifest_path(copy), replace(
        m, definitions={**m.definitions, **(definitions or {})}, size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        toc_entries=sum(1 for ln in entries.splitlines() if ln.strip()
                        and not ln.startswith(";"))))
    return copy


def outcome(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


DEFINITION = "test_every_object_has_its_backup_time_definition"
ARCHIVE = "test_every_archive_entry_is_in_the_restored_database"
LOCALE = "test_sandbox_database_is_like_production"
# not run for want of what these drills do not give: a migration, an integration command,
# a heartbeat table
OPTIONAL = {"test_alembic_upgrade_head_reaches_the_script_head",
            "test_revision_before_upgrade_matches_the_backup",
            "test_application_integration_suite_passes", "test_heartbeat_is_fresh_at_backup_time"}


def test_every_object_class_drills_clean_with_no_false_alarm(
        rich: tuple[ConnInfo, Path], tmp_path: Path) -> None:
    _info, path = rich
    m = read_manifest(manifest_path(path))
    kinds = {k.split(" ", 1)[0] for k in m.definitions}
    assert {"policy", "row_security", "matview", "large_object", "publication",
            "event_trigger", "default_acl", "cast", "collation", "ts_config", "ts_dictionary",
            "foreign_server", "statistics", "comment", "database"} <= kinds
    assert m.definitions["row_security public.tenants_data"] == "on, forced"
    assert m.definitions["matview audit.summary"] == "populated"
    assert m.definitions["large_object count"] == "5"
    assert m.definitions["foreign_server archive_srv"] == \
        "wrapper dummy_fdw options host=archive, port=5432"
    _done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                          backup_dir=tmp_path / "x", report_dir=tmp_path / "r")
    failed = {c["name"]: c["message"][:400] for c in result["checks"]
              if c["outcome"] not in ("passed", "finding", "skipped")}
    assert failed == {}
    assert ARCHIVE not in result["not_run"] and DEFINITION not in result["not_run"]
    definition = outcome(result, DEFINITION)
    assert definition["outcome"] == "passed"
    # every kind the backup read is compared both ways, those production had none of too
    assert m.definition_kinds == sorted(inventory.DEFINITION_KINDS)
    assert "trigger" in definition["evidence"][0] and "rule" in definition["evidence"][0]
    assert definition["evidence"][0].endswith("; 0 objects not in production at backup time")
    like = outcome(result, LOCALE)
    assert like["outcome"] == "passed"
    assert like["evidence"][:2] == [
        "sandbox database: UTF8, collate C.utf8, ctype C.utf8, icu locale en-US",
        "production at backup time: UTF8, collate C.utf8, ctype C.utf8, icu locale en-US "
        f"(PostgreSQL {m.server_version})"]
    # the restore validated log_a_fk on every row; log_b_fk, NOT VALID in production with
    # an orphan there, is read row by row and found as production had it
    keys = outcome(result, "test_foreign_keys_hold_for_every_row")
    assert keys["evidence"] == ["2 foreign keys: 1 validated on every row by the restore "
                                "itself, 1 NOT VALID checked row by row"]
    assert keys["outcome"] == "finding"
    assert "audit.log.log_b_fk: 1 rows without a parent in audit.codes" in keys["message"]
    archive = outcome(result, ARCHIVE)
    assert archive["outcome"] == "passed", archive["message"]
    entries = run(pg_restore_list_argv(toolchain.for_dump(15, toolchain.discover()), path),
                  what="pg_restore --list").stdout
    total = sum(1 for ln in entries.splitlines() if ln.strip() and not ln.startswith(";"))
    assert archive["evidence"][0] == f"{total} of {total} archive entries looked up in the " \
                                     "restored database"


# The four faults of the issue, each alone silent to pg_restore, each a resealed archive of
# its own (a scratch copy of production damaged, dumped, and the dump put under production's
# manifest) drilled alone: the verdict is FAIL for that fault and nothing else.
FAULTS = {
    "a removed policy": (
        "DROP POLICY tenant_isolation ON tenants_data", (),
        "POLICY public tenants_data tenant_isolation",
        {"comment policy tenant_isolation on public.tenants_data": "missing",
         "policy public.tenants_data.tenant_isolation": "missing"}),
    "row security off": (
        "ALTER TABLE audit.log DISABLE ROW LEVEL SECURITY", (), "ROW SECURITY audit log",
        {"row_security audit.log": "recorded 'on', restored 'off'"}),
    "large objects missing (--no-blobs)": (
        "", ("--no-blobs",), "BLOB",
        {"comment large object {first}": "missing", "large_object content": "missing",
         "large_object count": "missing", "large_object_acl all": "missing"}),
    "a matview WITH NO DATA": (
        "REFRESH MATERIALIZED VIEW audit.summary WITH NO DATA", (),
        "MATERIALIZED VIEW DATA audit summary",
        {"matview audit.summary": "recorded 'populated', restored 'not populated (WITH NO "
                                  "DATA)'"}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_alone_fails_naming_exactly_that_fault(
        rich: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path, fault: str) -> None:
    sql, dump_args, entry, named = FAULTS[fault]
    path = damaged(rich, pg15, tmp_path, sql=sql, dump_args=dump_args)
    with db.connect(rich[0]) as conn:
        first = conn.execute("SELECT min(doc) FROM tenants_data").fetchone()
    assert first is not None
    named = {k.format(first=first[0]): v for k, v in named.items()}
    before = run(pg_restore_list_argv(toolchain.for_dump(15, toolchain.discover()), rich[1]),
                 what="pg_restore --list").stdout
    after = run(pg_restore_list_argv(toolchain.for_dump(15, toolchain.discover()), path),
                what="pg_restore --list").stdout
    # the fault is in the archive's TOC: production's archive has the entry, this one not
    assert f" {entry} " in before and f" {entry} " not in after
    done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                         backup_dir=tmp_path / "damaged", report_dir=tmp_path / "r")
    assert (done.returncode, result["verdict"]) == (1, "FAIL"), done.stderr
    failed = {c["name"] for c in result["checks"] if c["outcome"] == "failed"}
    assert failed == {DEFINITION}, result["checks"]
    assert set(result["not_run"]) == OPTIONAL, result["not_run"]
    message = outcome(result, DEFINITION)["message"]
    verb = "differs from its" if len(named) == 1 else "differ from their"
    assert message.startswith(
        f"{len(named)} object{'s' if len(named) > 1 else ''} {verb} backup-time definition: "
        + ", ".join(named) + "\n"), message
    for key, line in named.items():
        assert f"{key}: {line}" in message, message
    # no other fault named: every other class came back as recorded
    others = {k for f, (_s, _a, _e, n) in FAULTS.items() if f != fault for k in n}
    assert {k for k in others if k.format(first=first[0]) in message} == set()
    # what the damaged archive holds came back whole: the fault is its missing entry
    assert outcome(result, ARCHIVE)["outcome"] == "passed"


# Objects production did not have, added to an archive that is then resealed: a policy
# beside production's own (a kind it had), a trigger (a kind it had none of: read back only
# because the manifest says the backup read that kind), a function and a grant.
EXTRAS = """
CREATE POLICY smuggled ON tenants_data FOR SELECT USING (true);
CREATE FUNCTION audit.stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER stamped BEFORE INSERT ON audit.codes FOR EACH ROW EXECUTE FUNCTION audit.stamp();
GRANT SELECT ON audit.codes TO PUBLIC;
"""


def test_objects_production_did_not_have_fail_the_definitions_check_each_named(
        rich: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path) -> None:
    path = damaged(rich, pg15, tmp_path, sql=EXTRAS)
    m = read_manifest(manifest_path(path))
    assert not any(k.startswith("trigger ") for k in m.definitions)  # none at backup time
    done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                         backup_dir=tmp_path / "damaged", report_dir=tmp_path / "r")
    assert (done.returncode, result["verdict"]) == (1, "FAIL"), done.stderr
    assert {c["name"] for c in result["checks"] if c["outcome"] == "failed"} == {DEFINITION}
    named = ["function audit.stamp()", "policy public.tenants_data.smuggled",
             "privileges table audit.codes", "trigger audit.codes.stamped"]
    message = outcome(result, DEFINITION)["message"]
    assert message.startswith("4 objects not in production at backup time: "
                              + ", ".join(named) + "\n"), message
    for key in named:
        assert f"{key}: not in production at backup time" in message, message
    assert outcome(result, DEFINITION)["evidence"][0].endswith(
        "; 4 objects not in production at backup time")


def test_a_public_schema_production_dropped_is_the_new_databases_not_a_difference(
        pg15: Cluster, tmp_path: Path) -> None:
    """Every new database has initdb's `public` schema, and pg_dump never drops it: a copy of
    a production without one has it, through no fault of the archive (nor is the `amcheck`
    extension pg_amcheck installs beside the read-back production's)."""
    name = f"nopub_{os.getpid()}"
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    info = pg15.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public; CREATE SCHEMA app; CREATE TABLE app.t (id int)")
    path = create_backup(info, tmp_path / "backups").path
    assert not any("public" in k for k in read_manifest(manifest_path(path)).definitions)
    _done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                          backup_dir=tmp_path / "backups", report_dir=tmp_path / "r")
    definition = outcome(result, DEFINITION)
    assert definition["outcome"] == "passed", definition["message"]
    assert "privileges" in definition["evidence"][0]  # restored with owners: compared
    assert definition["evidence"][0].endswith("; 0 objects not in production at backup time")


def test_production_locale_the_sandbox_lacks_is_incomplete_before_restoring(
        rich: tuple[ConnInfo, Path], tmp_path: Path) -> None:
    """Production ran on a machine with en_US.UTF-8, which this one lacks: said before
    restoring, and INCOMPLETE with the reason (not a pass under another collation)."""
    path = copy_backup(rich[1], tmp_path / "elsewhere")
    m = read_manifest(manifest_path(path))
    write_manifest(manifest_path(path), replace(m, definitions={
        **m.definitions, "database provider": "libc", "database locale": "",
        "database collate": "en_US.UTF-8", "database ctype": "en_US.UTF-8"}))
    done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                         backup_dir=tmp_path / "elsewhere", report_dir=tmp_path / "r")
    assert (done.returncode, result["verdict"]) == (10, "INCOMPLETE"), done.stderr
    assert set(result["not_run"]) == {LOCALE, *OPTIONAL}
    assert result["not_run"][LOCALE].startswith("the sandbox server (PostgreSQL 15.")
    assert "(UTF8, collate en_US.UTF-8, ctype en_US.UTF-8, libc): invalid locale name" \
        in result["not_run"][LOCALE], result["not_run"][LOCALE]
    assert {c["name"] for c in result["checks"] if c["outcome"] == "failed"} == set()


def test_a_sql_ascii_server_answers_in_text_and_a_sandbox_takes_its_encoding(
        pg15: Cluster) -> None:
    """psycopg returns bytes for text from a SQL_ASCII database (`role b'postgres'`): every
    connection atb opens to one asks for LATIN1 on the wire (one character per byte), so
    catalog names and values come back as text, each byte as it was written."""
    from drills import sandbox

    name = f"ascii_{os.getpid()}"
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING SQL_ASCII "
                     "LOCALE 'C'")
    try:
        with db.connect(pg15.url(name), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (name text); INSERT INTO t VALUES ('caf\u00e9')")
            assert conn.execute("SELECT current_user, name FROM t").fetchone() == (
                "postgres", "caf\u00e9")
            recorded = inventory.read_locale(conn)
            assert recorded == inventory.DatabaseLocale(encoding="SQL_ASCII", collate="C",
                                                        ctype="C")
            assert inventory.definitions(conn)["column public.t.name"] == "text"
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")
    made = sandbox._finish(pg15.url(), "local", 0.0, None, locale=recorded)
    try:
        assert made.locale == "SQL_ASCII, collate C, ctype C, libc" and not made.locale_missing
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {made.dbname}")


def test_a_restore_error_names_the_missing_schema_and_extension(
        rich: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path) -> None:
    """An archive without schema audit and extension pg_trgm (`pg_dump --schema public`)
    fails deep in an index's operator class; the message names what the archive lacks."""
    info, _path = rich
    path = damaged(rich, pg15, tmp_path, dump_args=("--schema=public",))
    target = info.with_dbname(f"{info.dbname}_lacking")
    done = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 5
    assert done.stderr.startswith("atb: error: pg_restore failed: the archive lacks schema "
                                  "audit, extension pg_trgm, recorded at backup time: "), \
        done.stderr


def test_a_parallel_restore_names_the_table_whose_data_is_damaged(
        pg15: Cluster, tmp_path: Path) -> None:
    """Under --jobs 4 the item that failed is one of several reading at once: each is read
    again alone, and the damaged one named (not whichever was launched last)."""
    name = f"par_{os.getpid()}"
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    info = pg15.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note "
                     "FROM generate_series(1, 30000) g")
        conn.execute("CREATE TABLE system_events AS SELECT g AS id, md5((g * 7)::text) AS m "
                     "FROM generate_series(1, 30000) g")
        conn.execute("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 10) g")
    path = create_backup(info, tmp_path / "backups").path
    data = bytearray(path.read_bytes())
    at = int(len(data) * 0.6)  # inside system_events' data, which follows orders'
    data[at:at + 32] = bytes(b ^ 0xFF for b in data[at:at + 32])
    path.write_bytes(bytes(data))
    m = read_manifest(manifest_path(path))
    write_manifest(manifest_path(path), replace(m, size_bytes=len(data),
                                                sha256=hashlib.sha256(data).hexdigest()))
    target = info.with_dbname(f"{name}_copy")
    done = atb_inproc("db", "restore", "--jobs", "4", str(path),
                      env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 5
    assert "(in the data of table public.system_events)" in done.stderr, done.stderr


LATIN1 = """
CREATE TABLE "caf\u00e9" (id int PRIMARY KEY, name text, "pr\u00e9nom" varchar(20));
COMMENT ON TABLE "caf\u00e9" IS 'menu du caf\u00e9';
INSERT INTO "caf\u00e9" SELECT g, 'caf\u00e9 ' || g, 'Ren\u00e9e' FROM generate_series(1, 20) g;
CREATE TABLE menu (id int);
CREATE VIEW "cr\u00e8me" AS SELECT name FROM "caf\u00e9" WHERE name LIKE 'caf\u00e9%';
"""


def test_a_sql_ascii_database_holding_latin1_bytes_drills_byte_for_byte(
        pg15: Cluster, tmp_path: Path) -> None:
    """A SQL_ASCII database stores bytes, not characters: latin-1 'caf\\xe9' in a value, a
    table's name and a comment is not UTF-8. atb reads such a database one character per
    byte, so the backup records and the drill compares the bytes themselves."""
    name = f"latin_{os.getpid()}"
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING SQL_ASCII "
                     "LOCALE 'C'")
    info = pg15.url(name)
    with db.connect(info, autocommit=True, client_encoding="LATIN1") as conn:
        conn.execute(LATIN1)  # latin-1 on the wire, stored as is: byte 0xe9
        raw = conn.execute("SELECT convert_to(name, 'SQL_ASCII') FROM \"caf\u00e9\" "
                           "WHERE id = 1").fetchone()
    assert raw is not None and bytes(raw[0]) == b"caf\xe9 1"
    with db.connect(info, autocommit=True, client_encoding="UTF8") as conn:
        conn.execute("COMMENT ON TABLE menu IS 'cr\u00e8me'")  # UTF-8 bytes c3 a8
    path = create_backup(info, tmp_path / "backups").path
    m = read_manifest(manifest_path(path))
    assert m.row_counts == {"public.caf\u00e9": 20, "public.menu": 0}
    assert m.definitions["comment table public.\"caf\u00e9\""] == "menu du caf\u00e9"
    # one character per byte: UTF-8 \xc3\xa8 in a comment is two characters
    assert m.definitions["comment table public.menu"] == "cr\u00c3\u00a8me"
    assert m.definitions["database encoding"] == "SQL_ASCII"
    assert all(v.startswith("typed:") for v in m.row_checksums.values()), m.row_checksums
    done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                         backup_dir=tmp_path / "backups", report_dir=tmp_path / "r")
    assert "Traceback" not in done.stderr
    failed = {c["name"]: c["message"][:300] for c in result["checks"]
              if c["outcome"] == "failed"}
    assert failed == {}, done.stderr
    assert (done.returncode, result["verdict"]) == (10, "INCOMPLETE")  # no heartbeat, app
    assert set(result["not_run"]) == OPTIONAL, result["not_run"]
    assert outcome(result, "test_every_table_has_its_backup_time_content")["evidence"] == [
        "2 tables, 20 rows: content checksums compared"]
    archive = outcome(result, ARCHIVE)
    assert archive["outcome"] == "passed" and archive["evidence"][0] == \
        f"{m.toc_entries} of {m.toc_entries} archive entries looked up in the restored database"
    assert outcome(result, LOCALE)["evidence"][0] == \
        "sandbox database: SQL_ASCII, collate C, ctype C, libc"
    # no migration: pg_amcheck ran beside the read-back, on the copy it judges
    assert outcome(result, "test_amcheck_finds_no_corruption")["evidence"][0].endswith(
        ": exit 0 (run beside the read-back of every table); the restored schemas' tables, "
        "indexes and TOAST and the large objects, not the sandbox's other system catalogs")
