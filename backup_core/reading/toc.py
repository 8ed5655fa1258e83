"""The archive's own table of contents, entry by entry, against the restored database.

Driven by the archive, not by a list of object classes: every entry `pg_restore --list`
shows must come back. Schema entries are found by listing a schema-only dump of the restored
database with the same pg_dump major (the two listings then name objects alike, whatever the
kind); data entries, which such a dump leaves out, are looked up in the catalogs. What can be
looked up neither way is returned as not compared, never as found.
"""

from __future__ import annotations

import bisect
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


_RELATIONS_SQL = """
    SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'S', 'm')"""
_LARGE_OBJECTS_SQL = """
    SELECT m.oid::bigint, m.lomacl IS NOT NULL,
           obj_description(m.oid, 'pg_largeobject') IS NOT NULL
    FROM pg_largeobject_metadata m ORDER BY m.oid"""


def database_codec(conn: psycopg.Connection[Any]) -> str:
    """The Python codec of the bytes the database stores (and pg_dump writes): a SQL_ASCII
    database's bytes are read one character per byte (LATIN1 on the wire, see db.connect)."""
    name = conn.info.parameter_status("server_encoding") or "UTF8"
    return "latin-1" if name == "SQL_ASCII" else _codec(name)


def _codec(encoding: str) -> str:
    from psycopg._encodings import pg2pyenc

    try:
        return pg2pyenc(encoding.encode())
    except psycopg.NotSupportedError:
        return "utf-8"


def as_listed(name: str, codec: str) -> str:
    """A catalog name as `pg_restore --list` shows it once atb reads that output: the
    database's bytes, decoded as UTF-8 with what is not UTF-8 replaced (the runner's way),
    so the two sides compare byte for byte whatever the encoding."""
    return name.encode(codec, "replace").decode("utf-8", "replace")


@dataclass(frozen=True)
class _LargeObjects:
    oids: list[int]
    with_acl: list[int]
    with_comment: set[int]

    def between(self, low: int, high: int, among: list[int] | None = None) -> bool:
        found = self.oids if among is None else among
        at = bisect.bisect_left(found, low)
        return at < len(found) and found[at] <= high


def find_data(conn: psycopg.Connection[Any], entries: list[TocEntry]) -> dict[str, bool]:
    """For each data or large-object entry atb can look up: whether the restored database
    has it (a table's data: the table is there, its rows are compared by count and checksum;
    a materialized view's data: it is populated; a large object: it exists). Two catalog
    reads in all, whatever the number of entries."""
    codec = database_codec(conn)
    relations: dict[tuple[str, str], set[str]] = {}
    for schema, name, kind, populated in conn.execute(_RELATIONS_SQL).fetchall():
        key = (as_listed(schema, codec), as_listed(name, codec))
        relations.setdefault(key, set()).add(
            "M" if kind == "m" and populated else str(kind))
    lobs: _LargeObjects | None = None
    found: dict[str, bool] = {}
    for e in entries:
        kinds = {"TABLE DATA": "rpf", "SEQUENCE SET": "S", "MATERIALIZED VIEW DATA": "M"}
        if e.desc in kinds:
            found[e.text] = bool(relations.get((e.schema, e.tag), set()) & set(kinds[e.desc]))
            continue
        oid = e.large_object
        lo_entry = e.desc in ("BLOB", "BLOBS", "BLOB METADATA") or (
            oid is not None and e.desc in ("COMMENT", "ACL"))
        if not lo_entry:
            continue
        if lobs is None:
            rows = conn.execute(_LARGE_OBJECTS_SQL).fetchall()
            lobs = _LargeObjects(oids=[int(r[0]) for r in rows],
                                 with_acl=[int(r[0]) for r in rows if r[1]],
                                 with_comment={int(r[0]) for r in rows if r[2]})
        span = (oid if oid is not None else e.tag).partition("..")
        if not (span[0].isdigit() and (span[2] or span[0]).isdigit()):
            found[e.text] = bool(lobs.oids)  # `BLOBS` before pg_dump 17: there is one
            continue
        low, high = int(span[0]), int(span[2] or span[0])
        if e.desc == "COMMENT":
            if not span[2]:
                found[e.text] = low in lobs.with_comment
        elif e.desc == "ACL":
            found[e.text] = lobs.between(low, high, lobs.with_acl)
        else:
            found[e.text] = lobs.between(low, high)
    return found


def lacking(entries: list[TocEntry], inventory: dict[str, Any],
            definitions: dict[str, str]) -> list[str]:
    """Schemas and extensions production had at backup time (the manifest's inventory and
    definitions) for which the archive has no entry: what a restore error deep in some
    index or table really comes from. Names compare as the listing shows their bytes."""
    encoding = definitions.get("database encoding", "UTF8")
    codec = "latin-1" if encoding == "SQL_ASCII" else _codec(encoding)
    have = {(e.desc, e.tag) for e in entries}
    found = [f"schema {s}" for s in sorted(inventory)
             if s != "public" and ("SCHEMA", as_listed(s, codec)) not in have]
    for key in sorted(definitions):
        if key.startswith("extension "):
            name = _unquoted(key[len("extension "):])
            if ("EXTENSION", as_listed(name, codec)) not in have:
                found.append(f"extension {name}")
    return found


def _unquoted(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name
