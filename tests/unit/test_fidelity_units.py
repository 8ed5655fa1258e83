"""The archive's TOC read and judged entry by entry, and the recorded locale read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup_core.reading import inventory, toc
from backup_core.store.catalog import Backup
from backup_core.store.manifest import Manifest
from backup_core.tools import db
from backup_core.tools.conninfo import ConnInfo
from drills import checks
from drills.failures import CheckFailed
from drills.plugin.fixtures import Evidence, RestoreOutcome
from drills.sandbox import SandboxInfo

LISTING = """;
; Archive created at 2026-11-29 22:05:45 UTC
;
7; 2615 16385 SCHEMA - audit postgres
2; 3079 16386 EXTENSION - pg_trgm {empty}
3127; 2605 16510 CAST - CAST (text AS audit.level) {empty}
3433; 0 16484 TABLE DATA audit log postgres
3435; 2613 16478 BLOB METADATA - 16478..16482 postgres
3440; 0 0 BLOBS - BLOBS {empty}
3455; 0 0 COMMENT - LARGE OBJECT 16478 postgres
3427; 3256 16477 POLICY public tenants_data tenant_insert postgres
3425; 0 16468 ROW SECURITY public tenants_data postgres
3451; 0 0 ACL audit TABLE remote_log postgres
2107; 826 16502 DEFAULT ACL audit DEFAULT PRIVILEGES FOR TABLES postgres
9; 0 0 STATISTICS DATA public tenants_data postgres
""".format(empty="")  # no owner


def test_a_listing_is_read_into_kind_schema_name_and_owner() -> None:
    entries = toc.parse_listing(LISTING)
    assert [e.text for e in entries] == [
        "SCHEMA - audit", "EXTENSION - pg_trgm", "CAST - CAST (text AS audit.level)",
        "TABLE DATA audit log", "BLOB METADATA - 16478..16482", "BLOBS - BLOBS",
        "COMMENT - LARGE OBJECT 16478", "POLICY public tenants_data tenant_insert",
        "ROW SECURITY public tenants_data", "ACL audit TABLE remote_log",
        "DEFAULT ACL audit DEFAULT PRIVILEGES FOR TABLES",
        "STATISTICS DATA public tenants_data"]
    assert [e.owner for e in entries[:3]] == ["postgres", "", ""]
    assert entries[6].large_object == "16478" and entries[0].large_object is None
    [grants] = toc.parse_listing("3455; 0 0 ACL - LARGE OBJECTS 16478..16482 postgres")
    assert grants.large_object == "16478..16482"  # pg_dump 17+ groups them


def test_every_entry_is_found_missing_or_not_compared_with_its_reason() -> None:
    archive = toc.parse_listing(LISTING)
    restored = [e for e in archive if e.desc not in ("POLICY", "TABLE DATA")]
    data = {"TABLE DATA audit log": False, "BLOB METADATA - 16478..16482": True,
            "BLOBS - BLOBS": True, "COMMENT - LARGE OBJECT 16478": True}
    result = toc.compare(archive, restored, data_found=data, with_grants=False)
    assert result.missing == ["TABLE DATA audit log", "POLICY public tenants_data tenant_insert"]
    assert result.compared == 9
    assert result.not_compared == {
        "ACL": "restored without owners and grants",
        "DEFAULT ACL": "restored without owners and grants",
        "STATISTICS DATA": "atb cannot look this kind up in a restored database"}
    public = toc.parse_listing("5; 2615 2200 SCHEMA - public app\n")
    assert toc.compare(public, [], data_found={}, with_grants=False).not_compared == {
        "SCHEMA public": "its owner, restored without owners and grants"}
    assert toc.compare(public, [], data_found={}, with_grants=True).missing == [
        "SCHEMA - public"]
    twice = toc.compare(archive + archive[:1], restored, data_found=data, with_grants=True)
    assert "SCHEMA - audit" in twice.missing  # entries are counted, not only named
    unlisted = toc.compare(archive, None, data_found=data, with_grants=True,
                           why_no_listing="no pg_dump 15 here")
    assert unlisted.not_compared["POLICY"] == "no pg_dump 15 here"
    assert unlisted.missing == ["TABLE DATA audit log"]


def test_the_recorded_locale_is_read_back_from_the_definitions() -> None:
    icu = inventory.DatabaseLocale(encoding="UTF8", collate="C.utf8", ctype="C.utf8",
                                   provider="icu", locale="en-US")
    defs = {"column public.t.a": "integer", **icu.as_definitions()}
    assert defs["database provider"] == "icu"
    assert inventory.DatabaseLocale.from_definitions(defs) == icu
    assert icu.describe() == "UTF8, collate C.utf8, ctype C.utf8, icu locale en-US"
    assert inventory.DatabaseLocale.from_definitions({"column public.t.a": "integer"}) is None


def test_grants_compare_in_any_order_and_other_definitions_exactly() -> None:
    old = "{postgres=arwdDxt/postgres,=r/postgres}"  # production's order, an older manifest
    assert inventory.comparable("privileges table public.t", old) == \
        inventory.comparable("privileges table public.t", "{=r/postgres,postgres=arwdDxt/postgres}")
    assert inventory.comparable("column public.t.a", "{b,a}") == "{b,a}"


def test_a_local_sandbox_cluster_takes_productions_locale_where_the_machine_has_it() -> None:
    from drills.sandbox import cluster_locale

    us = inventory.DatabaseLocale(encoding="UTF8", collate="en_US.UTF-8", ctype="en_US.UTF-8")
    assert cluster_locale(us, ["C", "C.utf8", "POSIX", "en_US.utf8"]) == "en_US.utf8"
    assert cluster_locale(us, ["C", "C.utf8", "POSIX"]) == "C"  # not here: C, and said
    icu = inventory.DatabaseLocale(encoding="UTF8", collate="C.utf8", ctype="C.utf8",
                                   provider="icu", locale="en-US")
    assert cluster_locale(icu, ["C", "C.utf8"]) == "C.utf8"
    latin = inventory.DatabaseLocale(encoding="LATIN1", collate="de_DE", ctype="de_DE")
    assert cluster_locale(latin, ["de_DE"]) == "C"  # the cluster is UTF-8
    assert cluster_locale(None, ["C.utf8"]) == "C"


def test_a_catalog_name_is_compared_as_the_listing_shows_its_bytes() -> None:
    """pg_restore --list prints the database's bytes; atb reads them as UTF-8 with what is
    not UTF-8 replaced. A catalog name read one character per byte (SQL_ASCII) or decoded
    from UTF-8 takes the same form, so the same bytes compare equal and others do not."""
    listed = b"caf\xe9".decode("utf-8", "replace")
    assert toc.as_listed("caf\u00e9", "latin-1") == listed == "caf\ufffd"
    assert toc.as_listed("caf\u00c3\u00a9", "latin-1") == "caf\u00e9"  # UTF-8 bytes
    assert toc.as_listed("caf\u00e9", "utf-8") == "caf\u00e9"
    assert toc.as_listed("cafe", "latin-1") != listed


def test_a_schema_the_archive_lacks_is_named_whatever_its_bytes() -> None:
    """A SQL_ASCII production's schema `caf\\xe9` is listed by pg_restore as its bytes: found
    when the archive has it, named when it does not."""
    listing = toc.parse_listing("5; 2615 16390 SCHEMA - caf\ufffd postgres\n")
    recorded = {"database encoding": "SQL_ASCII"}
    inv = {"caf\u00e9": {"tables": ["t"]}, "audit": {"tables": ["log"]}}
    assert toc.lacking(listing, inv, recorded) == ["schema audit"]
    assert toc.lacking([], inv, recorded) == ["schema audit", "schema caf\u00e9"]


def test_recorded_kinds_are_the_kinds_of_a_manifests_definitions() -> None:
    from backup_core.store.manifest import Manifest

    m = Manifest(database="d", file="backup-20260101T000000Z.dump",
                 taken_at="2026-01-01T00:00:00+00:00", started_at="2026-01-01T00:00:00+00:00",
                 finished_at="2026-01-01T00:00:00+00:00", duration_s=1.0, size_bytes=1,
                 sha256="0" * 64, pg_dump_version="18.6", server_version="18.6",
                 toc_entries=1, alembic_revision=None, row_counts_mode="off",
                 definitions={"column public.t.a": "integer", "column public.t.b": "text",
                              "view public.v": "SELECT 1", "database encoding": "UTF8"})
    assert inventory.recorded_kinds(m) == {"column", "view", "database"}
    assert inventory.recorded_kinds(None) == set()


def _manifest(definitions: dict[str, str], kinds: list[str]) -> Manifest:
    return Manifest(database="d", file="backup-20260101T000000Z.dump",
                    taken_at="2026-01-01T00:00:00+00:00",
                    started_at="2026-01-01T00:00:00+00:00",
                    finished_at="2026-01-01T00:00:00+00:00", duration_s=1.0, size_bytes=1,
                    sha256="0" * 64, pg_dump_version="15.8", server_version="15.8",
                    toc_entries=1, alembic_revision=None, row_counts_mode="off",
                    definitions=definitions, definition_kinds=kinds)


def test_the_kinds_a_manifest_records_it_read_are_compared_those_with_no_object_too() -> None:
    """`definition_kinds` says which kinds the backup's atb read, so a kind production had
    no object of is read back and compared; one this atb does not know is left out."""
    m = _manifest({"column public.t.a": "integer"}, ["column", "trigger", "hologram"])
    assert inventory.recorded_kinds(m) == {"column", "trigger"}
    # every kind a backup reads is recorded, and each is one `_definition_plan` reads back
    assert set(inventory.DEFINITION_KINDS) == {*inventory.DEFINITIONS_SQL, "large_object",
                                               "large_object_acl", "database"}
    planned = {step for step, _ in inventory._definition_plan(inventory.DEFINITION_KINDS)}
    assert planned == {*inventory.DEFINITIONS_SQL, "+labelled", "+large objects",
                       "+locale"} - {"security_label"}


def test_definition_kinds_are_an_optional_list_an_older_manifest_lacks(tmp_path: Path) -> None:
    m = _manifest({"column public.t.a": "integer"}, ["column", "policy"])
    data = json.loads(m.to_json())
    assert data["definition_kinds"] == ["column", "policy"]
    assert Manifest.from_dict(data) == m
    del data["definition_kinds"]  # written by an atb before the field
    assert Manifest.from_dict(data).definition_kinds == []
    for bad in ("policy", [1], ["a b"], ["x" * 65]):
        with pytest.raises(ValueError, match="definition_kinds"):
            Manifest.from_dict({**data, "definition_kinds": bad})
    # an unknown field is ignored by `from_dict`: an atb before this one reads the new manifest
    # (the same rule, fields it does not know left out, lets it read `definition_kinds`)
    assert Manifest.from_dict({**data, "definition_kinds": ["column"], "later": 1}) \
        .definition_kinds == ["column"]


def _judge(m: Manifest, found: dict[str, str], *, owners: bool = True,
           sandbox: str = "15.8") -> tuple[str | None, Evidence, dict[str, str]]:
    """The definitions check on plain values: its failure's message (None: passed)."""
    backup = Backup(path=Path("/x/backup-20260101T000000Z.dump"), database="d",
                    state="complete", taken_at=None, size=1, mtime=0.0, manifest=m)
    box = SandboxInfo(provider="local", server_version=sandbox, url=ConnInfo.parse(
        "postgresql://u@localhost/d"), identity=db.Identity("s", 1, "d"), start_s=0.0)
    ev = Evidence()
    try:
        checks.test_every_object_has_its_backup_time_definition(
            backup, RestoreOutcome(ok=True, definitions=found, with_owners=owners), box,
            box.url, ev)
    except CheckFailed as exc:
        assert isinstance(exc.found, dict)
        return exc.summary, ev, exc.found
    return None, ev, {}


PRODUCTION = {"column public.t.a": "integer", "policy public.t.p": "permissive for all to "
              "public using (true)", "database encoding": "UTF8"}


def test_an_object_production_did_not_have_is_a_difference_named_as_such() -> None:
    m = _manifest(PRODUCTION, sorted(inventory.DEFINITION_KINDS))
    clean = {**PRODUCTION, "database encoding": "SQL_ASCII",  # the locale check's, not this
             # pg_amcheck's, installed in the sandbox beside the read-back: the drill's own
             "extension amcheck": "version 1.3",
             "comment extension amcheck": "functions for verifying relation integrity",
             # the new database's public schema, which production had dropped
             "privileges schema public": "{postgres=UC/postgres,=U/postgres}"}
    message, ev, _ = _judge(m, clean)
    assert message is None
    assert ev[0].endswith("; 0 objects not in production at backup time")
    assert ev[1:] == []
    extra = {**PRODUCTION, "policy public.t.q": "permissive for all to public using (true)",
             "trigger public.t.stamp": "CREATE TRIGGER ...",  # a kind production had none of
             "privileges table public.t": "{=r/postgres}"}
    message, ev, found = _judge(m, extra)
    assert message == ("3 objects not in production at backup time: policy public.t.q, "
                       "privileges table public.t, trigger public.t.stamp")
    assert found == {k: "not in production at backup time" for k in
                     ("policy public.t.q", "privileges table public.t", "trigger public.t.stamp")}
    # with a difference too: both named, each in its own words
    message, _, found = _judge(m, {**extra, "column public.t.a": "bigint"})
    assert message == ("1 object differs from its backup-time definition: column public.t.a; "
                       "3 objects not in production at backup time: policy public.t.q, "
                       "privileges table public.t, trigger public.t.stamp")
    assert found["column public.t.a"] == "recorded 'integer', restored 'bigint'"
    # kinds skipped for differences are skipped for extras: no owners, another major
    message, ev, _ = _judge(m, extra, owners=False, sandbox="18.1")
    assert message is None
    assert ev[1:] == ["not compared: owners and privileges (restored without owners)",
                      "not compared: deparsed definitions (sandbox PostgreSQL 18.1, source "
                      "15.8)"]


def test_an_older_manifest_compares_extras_in_the_kinds_it_recorded_and_says_so() -> None:
    m = _manifest(PRODUCTION, [])  # written before `definition_kinds`
    message, ev, _ = _judge(m, {**PRODUCTION, "policy public.t.q": "x",
                                "trigger public.t.stamp": "y"})
    assert message == "1 object not in production at backup time: policy public.t.q"
    assert ev == ["2 definitions compared (column, policy); 1 object not in production at "
                  "backup time", "not compared: kinds with no recorded object, for objects "
                  "production did not have (a backup by an older atb, which did not record "
                  "the kinds it read)"]
