"""The archive's own table of contents, entry by entry, against the restored database.

Driven by the archive, not by a list of object classes: every entry `pg_restore --list`
shows must come back. Schema entries are found by listing a schema-only dump of the restored
database with the same pg_dump major (the two listings then name objects alike, whatever the
kind); data entries, which such a dump leaves out, are looked up in the catalogs. What can be
looked up neither way is returned as not compared, never as found.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

# Every entry kind pg_dump writes (pg_dump.c, majors 10 to 18), longest first so that
# "TABLE DATA" is not read as "TABLE" with a schema called DATA.
DESCS = tuple(sorted((
    "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOB METADATA", "BLOBS", "CAST",
    "CHECK CONSTRAINT", "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE",
    "DATABASE PROPERTIES", "DEFAULT", "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER",
    "EXTENSION", "FK CONSTRAINT", "FOREIGN DATA WRAPPER", "FOREIGN TABLE", "FUNCTION", "INDEX",
    "INDEX ATTACH", "LARGE OBJECT", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "OPERATOR",
    "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY", "PROCEDURAL LANGUAGE", "PROCEDURE",
    "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "ROW SECURITY", "RULE",
    "SCHEMA", "SEARCHPATH", "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET",
    "SERVER", "SHELL TYPE", "STATISTICS", "STATISTICS DATA", "STDSTRINGS", "SUBSCRIPTION",
    "SUBSCRIPTION TABLE", "TABLE", "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM",
    "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
), key=len, reverse=True))
# Entries a schema-only dump leaves out: looked up in the catalogs instead.
DATA_DESCS = ("TABLE DATA", "SEQUENCE SET", "MATERIALIZED VIEW DATA", "BLOB", "BLOB METADATA",
              "BLOBS", "STATISTICS DATA")
GRANT_DESCS = ("ACL", "DEFAULT ACL")
_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")


@dataclass(frozen=True)
class TocEntry:
    """One line of `pg_restore --list`, without its dump id, OIDs and owner (which differ in
    a restored copy): `text` is what the restored database's own listing must also show."""

    desc: str
    schema: str
    tag: str
    owner: str
    dump_id: int = 0

    @property
    def text(self) -> str:
        return f"{self.desc} {self.schema} {self.tag}"

    @property
    def large_object(self) -> str | None:
        """The OID of the large object a comment, grant or label is on, or the range
        `first..last` of a group of them (pg_dump 17+ grants on `LARGE OBJECTS a..b`)."""
        match = re.fullmatch(r"LARGE OBJECTS? (\d+(?:\.\.\d+)?)", self.tag)
        return match.group(1) if match else None


def parse_listing(listing: str) -> list[TocEntry]:
    """The entries of a `pg_restore --list` output (comments and blank lines skipped)."""
    entries = []
    for line in listing.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        rest = match.group(4)
        # the owner is the last word, empty for objects without one (a cast, an extension)
        body, owner = (rest[:-1], "") if rest.endswith(" ") else rest.rsplit(" ", 1)
        desc = next((d for d in DESCS if body.startswith(d + " ")), body.split(" ", 1)[0])
        schema, _, tag = body[len(desc) + 1:].partition(" ")
        entries.append(TocEntry(desc=desc, schema=schema, tag=tag, owner=owner,
                                dump_id=int(match.group(1))))
    return entries


@dataclass(frozen=True)
class TocComparison:
    """How the archive's entries came back: counts compared, what is missing, and what could
    not be compared with the reason, by kind."""

    compared: int
    missing: list[str] = field(default_factory=list)
    not_compared: dict[str, str] = field(default_factory=dict)  # kind -> why


def compare(archive: list[TocEntry], restored: list[TocEntry] | None, *,
            data_found: dict[str, bool], with_grants: bool, why_no_listing: str = ""
            ) -> TocComparison:
    """Judge every archive entry (pure): schema entries against the restored database's own
    listing (`restored`, None when it could not be made, for `why_no_listing`), data and
    large-object entries against `data_found` (entry text -> present; absent: not looked
    up), grants only when the copy was restored with them."""
    have = Counter(e.text for e in restored or [])
    missing: list[str] = []
    skipped: dict[str, str] = {}
    compared = 0
    for entry in archive:
        if entry.desc in GRANT_DESCS and not with_grants:
            skipped[entry.desc] = "restored without owners and grants"
        elif entry.text == "SCHEMA - public" and not with_grants:
            # the entry only sets the schema's owner, which such a restore leaves out
            skipped["SCHEMA public"] = "its owner, restored without owners and grants"
        elif entry.desc in DATA_DESCS or entry.large_object is not None:
            if entry.text not in data_found:
                skipped[entry.desc] = "atb cannot look this kind up in a restored database"
                continue
            compared += 1
            if not data_found[entry.text]:
                missing.append(entry.text)
        elif restored is None:
            skipped[entry.desc] = why_no_listing
        else:
            compared += 1
            if have[entry.text] > 0:
                have[entry.text] -= 1
            else:
                missing.append(entry.text)
    return TocComparison(compared=compared, missing=missing, not_compared=dict(sorted(
        skipped.items())))


def _relation(conn: psycopg.Connection[Any], entry: TocEntry, kinds: str,
              extra: str = "") -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = %s AND c.relname = %s AND c.relkind = ANY(%s) {extra}",
        (entry.schema, entry.tag, list(kinds))).fetchone()
    return bool(row and row[0])


def _objects_between(conn: psycopg.Connection[Any], tag: str) -> bool:
    """A group of large objects (`first..last`, pg_dump 17+; `BLOBS` before): there is
    one. How many there are and what they hold is compared with the manifest."""
    low, _, high = tag.partition("..")
    if not (low.isdigit() and (high or low).isdigit()):
        row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata "
                           "WHERE oid BETWEEN %s::oid AND %s::oid",
                           (low, high or low)).fetchone()
    return bool(row and row[0])


def find_data(conn: psycopg.Connection[Any], entries: list[TocEntry]) -> dict[str, bool]:
    """For each data or large-object entry atb can look up: whether the restored database
    has it (a table's data: the table is there, its rows are compared by count and checksum;
    a materialized view's data: it is populated; a large object: it exists)."""
    found: dict[str, bool] = {}
    for e in entries:
        oid = e.large_object
        if e.desc == "TABLE DATA":
            found[e.text] = _relation(conn, e, "rpf")
        elif e.desc == "SEQUENCE SET":
            found[e.text] = _relation(conn, e, "S")
        elif e.desc == "MATERIALIZED VIEW DATA":
            found[e.text] = _relation(conn, e, "m", "AND c.relispopulated")
        elif e.desc == "BLOB" or e.desc in ("BLOBS", "BLOB METADATA"):
            found[e.text] = _objects_between(conn, e.tag)
        elif oid is not None and e.desc == "COMMENT" and oid.isdigit():
            row = conn.execute("SELECT obj_description(%s::oid, 'pg_largeobject') IS NOT NULL",
                               (oid,)).fetchone()
            found[e.text] = bool(row and row[0])
        elif oid is not None and e.desc == "ACL":
            low, _, high = oid.partition("..")
            row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata "
                               "WHERE oid BETWEEN %s::oid AND %s::oid AND lomacl IS NOT NULL",
                               (low, high or low)).fetchone()
            found[e.text] = bool(row and row[0])
    return found


def lacking(entries: list[TocEntry], inventory: dict[str, Any],
            definitions: dict[str, str]) -> list[str]:
    """Schemas and extensions production had at backup time (the manifest's inventory and
    definitions) for which the archive has no entry: what a restore error deep in some
    index or table really comes from."""
    have = {(e.desc, e.tag) for e in entries}
    found = [f"schema {s}" for s in sorted(inventory)
             if s != "public" and ("SCHEMA", s) not in have]
    for key in sorted(definitions):
        if key.startswith("extension "):
            name = _unquoted(key[len("extension "):])
            if ("EXTENSION", name) not in have:
                found.append(f"extension {name}")
    return found


def _unquoted(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name
